"""What llmdbg knows about model families: layout discovery, the attention implementation, the
task type, the unembedding and head geometry. Features ask these modules instead of guessing."""
