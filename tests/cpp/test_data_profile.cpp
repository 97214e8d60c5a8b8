// The data-profiling counters against plain std:: references: whitespace splitting (including
// the Unicode spaces Python's str.split() knows), token and id counts, duplicate groups under
// forced hash collisions, thread-count determinism and the error paths.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "core/data/profile.hpp"

namespace dp = llmdbg::data;

namespace {

std::vector<std::string_view> views(const std::vector<std::string>& v) {
  return {v.begin(), v.end()};
}

// Random texts over a small vocabulary with mixed separators; some exact repeats.
std::vector<std::string> random_texts(int n, unsigned seed) {
  std::mt19937 rng(seed);
  const std::vector<std::string> words = {
      "a", "the", "cat", "Cat", "dogs!", "über", "naïve", "x1", "long_token_12345"};
  const std::vector<std::string> seps = {" ", "  ", "\t", "\n", " \r\n "};
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) {
    if (i > 3 && rng() % 5 == 0) {
      out.push_back(out[rng() % out.size()]);
      continue;
    }
    std::string s = (rng() % 3 == 0) ? " " : "";
    const int len = static_cast<int>(rng() % 12);
    for (int k = 0; k < len; ++k) s += words[rng() % words.size()] + seps[rng() % seps.size()];
    out.push_back(s);
  }
  return out;
}

// Reference split on ASCII whitespace only (random_texts uses no other).
std::vector<std::string> split_ascii(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f') {
      if (!cur.empty()) out.push_back(cur), cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

}  // namespace

TEST(DataProfile, WhitespaceMatchesPythonIsspace) {
  // Every str.isspace() code point separates tokens; look-alikes do not.
  const std::string text = std::string("a\x1c") +
                           "b\xc2\x85"
                           "c\xc2\xa0"
                           "d\xe1\x9a\x80"
                           "e\xe2\x80\x80"
                           "f\xe2\x80\x8a"
                           "g\xe2\x80\xa8"
                           "h\xe2\x80\xa9"
                           "i\xe2\x80\xaf"
                           "j\xe2\x81\x9f"
                           "k\xe3\x80\x80"
                           "l";
  const std::vector<std::string> texts = {text};
  const auto r = dp::count_whitespace_tokens(views(texts), 1);
  ASSERT_EQ(r.tokens.size(), 12u);
  EXPECT_EQ(r.tokens[0], "a");
  EXPECT_EQ(r.tokens[11], "l");
  // U+200B (zero width space) and U+00E9 (é, lead byte 0xc3) are not whitespace.
  const std::vector<std::string> other = {
      "a\xe2\x80\x8b"
      "b \xc3\xa9 \xc2\xa9"};
  const auto q = dp::count_whitespace_tokens(views(other), 1);
  ASSERT_EQ(q.tokens.size(), 3u);
  EXPECT_EQ(q.tokens[0],
            "a\xe2\x80\x8b"
            "b");
  EXPECT_EQ(dp::whitespace_length("\xe2\x80\x8a", "\xe2\x80\x8a" + 3), 3);
  EXPECT_EQ(dp::whitespace_length("\xe2\x80", "\xe2\x80" + 2), 0);  // truncated sequence
}

TEST(DataProfile, TokenCountsEqualReference) {
  const auto texts = random_texts(3000, 7);
  std::map<std::string, int64_t> ref;
  std::vector<std::string> first_order;
  std::vector<int64_t> ref_len;
  for (const auto& t : texts) {
    const auto toks = split_ascii(t);
    ref_len.push_back(static_cast<int64_t>(toks.size()));
    for (const auto& w : toks) {
      if (ref[w]++ == 0) first_order.push_back(w);
    }
  }
  for (int threads : {1, 2, 3, 8}) {
    const auto r = dp::count_whitespace_tokens(views(texts), threads);
    ASSERT_EQ(r.tokens.size(), first_order.size()) << threads;
    int64_t total = 0;
    for (size_t i = 0; i < r.tokens.size(); ++i) {
      EXPECT_EQ(std::string(r.tokens[i]), first_order[i]);
      EXPECT_EQ(r.counts[i], ref[first_order[i]]);
      total += r.counts[i];
    }
    EXPECT_EQ(r.total, total);
    EXPECT_EQ(r.lengths, ref_len);
  }
}

TEST(DataProfile, ManyUniqueTokensGrowTheTable) {
  std::vector<std::string> texts;
  for (int i = 0; i < 5000; ++i)
    texts.push_back("w" + std::to_string(i) + " w" + std::to_string(i / 2));
  const auto r = dp::count_whitespace_tokens(views(texts), 2);
  EXPECT_EQ(r.tokens.size(), 5000u);
  EXPECT_EQ(r.total, 10000);
  EXPECT_EQ(r.counts[0], 3);  // "w0" occurs in texts 0 (twice) and 1
}

TEST(DataProfile, EmptyInputs) {
  const auto r = dp::count_whitespace_tokens({}, 2);
  EXPECT_TRUE(r.tokens.empty());
  EXPECT_EQ(r.total, 0);
  const std::vector<std::string> blank = {"", "   ", "\n"};
  const auto b = dp::count_whitespace_tokens(views(blank), 2);
  EXPECT_TRUE(b.tokens.empty());
  EXPECT_EQ(b.lengths, (std::vector<int64_t>{0, 0, 0}));
  EXPECT_TRUE(dp::duplicate_groups({}, 2).empty());
}

TEST(DataProfile, IdCounts) {
  const std::vector<int64_t> ids = {3, 1, 3, 0, 4, 4, 4};
  const std::vector<int64_t> offsets = {0, 3, 3, 7};
  for (int threads : {1, 4}) {
    const auto r = dp::count_ids(ids.data(), offsets.data(), 3, 6, threads);
    EXPECT_EQ(r.counts, (std::vector<int64_t>{1, 1, 0, 2, 3, 0}));
    EXPECT_EQ(r.lengths, (std::vector<int64_t>{3, 0, 4}));
    EXPECT_EQ(r.total, 7);
  }
  // Large enough to run on several threads.
  std::mt19937 rng(3);
  std::vector<int64_t> big(300000);
  std::vector<int64_t> ref(50, 0);
  for (auto& v : big) ++ref[static_cast<size_t>(v = rng() % 50)];
  const std::vector<int64_t> off = {0, 100000, 300000};
  EXPECT_EQ(dp::count_ids(big.data(), off.data(), 2, 50, 4).counts, ref);
}

TEST(DataProfile, IdCountErrors) {
  const std::vector<int64_t> ids = {3, 9};
  const std::vector<int64_t> offsets = {0, 2};
  EXPECT_THROW(dp::count_ids(ids.data(), offsets.data(), 1, 5, 1), std::invalid_argument);
  const std::vector<int64_t> neg = {-1};
  const std::vector<int64_t> one = {0, 1};
  EXPECT_THROW(dp::count_ids(neg.data(), one.data(), 1, 5, 1), std::invalid_argument);
  const std::vector<int64_t> bad_off = {1, 2};
  EXPECT_THROW(dp::count_ids(ids.data(), bad_off.data(), 1, 10, 1), std::invalid_argument);
  const std::vector<int64_t> dec = {0, 2, 1};
  EXPECT_THROW(dp::count_ids(ids.data(), dec.data(), 2, 10, 1), std::invalid_argument);
  EXPECT_THROW(dp::count_ids(ids.data(), offsets.data(), 1, 0, 1), std::invalid_argument);
}

TEST(DataProfile, DuplicateGroupsEqualReference) {
  const auto texts = random_texts(4000, 11);
  std::map<std::string, int64_t> first;
  std::vector<int64_t> ref;
  for (size_t i = 0; i < texts.size(); ++i)
    ref.push_back(first.emplace(texts[i], static_cast<int64_t>(i)).first->second);
  for (int threads : {1, 2, 5}) {
    EXPECT_EQ(dp::duplicate_groups(views(texts), threads), ref) << threads;
  }
  // Every hash collides (mask 0, and a 3-bit mask): bytes still decide.
  const std::vector<std::string> small(texts.begin(), texts.begin() + 600);
  std::vector<int64_t> small_ref(ref.begin(), ref.begin() + 600);
  for (uint64_t mask : {uint64_t{0}, uint64_t{7}}) {
    EXPECT_EQ(dp::duplicate_groups(views(small), 2, mask), small_ref) << mask;
  }
}

TEST(DataProfile, HashIsStableAndSpreads) {
  EXPECT_EQ(dp::hash_bytes("abc", 3), dp::hash_bytes("abcd", 3));
  EXPECT_NE(dp::hash_bytes("abc", 3), dp::hash_bytes("abd", 3));
  EXPECT_NE(dp::hash_bytes("", 0), dp::hash_bytes("\0", 1));
}

namespace {

// Reference split with the scalar whitespace test: skip whitespace characters, a token runs
// until the next one (what Python's str.split() does on UTF-8 bytes).
std::vector<std::string> split_reference(const std::string& s) {
  std::vector<std::string> out;
  const char* p = s.data();
  const char* end = p + s.size();
  while (p < end) {
    int w;
    while (p < end && (w = dp::whitespace_length(p, end)) > 0) p += w;
    if (p == end) break;
    const char* start = p;
    while (p < end && dp::whitespace_length(p, end) == 0) ++p;
    out.emplace_back(start, p);
  }
  return out;
}

void expect_counts_match_reference(const std::vector<std::string_view>& texts,
                                   const dp::TokenCounts& r) {
  std::map<std::string, int64_t> ref;
  std::vector<std::string> order;
  std::vector<int64_t> lengths;
  for (const auto& t : texts) {
    const auto toks = split_reference(std::string(t));
    lengths.push_back(static_cast<int64_t>(toks.size()));
    for (const auto& w : toks) {
      if (ref[w]++ == 0) order.push_back(w);
    }
  }
  ASSERT_EQ(r.tokens.size(), order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    EXPECT_EQ(std::string(r.tokens[i]), order[i]) << i;
    EXPECT_EQ(r.counts[i], ref[order[i]]) << order[i];
  }
  EXPECT_EQ(r.lengths, lengths);
}

}  // namespace

TEST(DataProfile, TokensAcrossWindowBoundaries) {
  // The scan works on 64-byte windows: tokens, long tokens (> 16 bytes, > 64 bytes) and
  // multi-byte spaces (2 and 3 bytes) placed across every offset around the window edges.
  const std::vector<std::string> pieces = {"a",
                                           "bb",
                                           "sixteen_bytes_xx",
                                           "seventeen_bytes_x",
                                           std::string(70, 'q'),
                                           std::string(130, 'r'),
                                           "\xc3\xa9t\xc3\xa9",
                                           "x\xe2\x80\x8by"};
  const std::vector<std::string> spaces = {
      " ", "\t\n", "\xc2\xa0", "\xe3\x80\x80", "\xe2\x80\xa8", "\x1c", "\xc2\x85 "};
  std::vector<std::string> texts;
  std::mt19937 rng(5);
  for (int lead = 0; lead < 70; ++lead) {
    for (size_t s = 0; s < spaces.size(); ++s) {
      std::string t(static_cast<size_t>(lead), 'z');
      t += spaces[s];
      for (int k = 0; k < 6; ++k)
        t += pieces[rng() % pieces.size()] + spaces[rng() % spaces.size()];
      if (rng() % 2) t += pieces[rng() % pieces.size()];  // sometimes ends inside a token
      texts.push_back(t);
    }
  }
  const auto v = views(texts);
  for (int threads : {1, 3})
    expect_counts_match_reference(v, dp::count_whitespace_tokens(v, threads));
}

TEST(DataProfile, ProfileWhitespaceEqualsSeparateCalls) {
  const auto texts = random_texts(5000, 13);
  const auto v = views(texts);
  for (int threads : {1, 2, 4}) {
    const auto p = dp::profile_whitespace(v, threads);
    const auto c = dp::count_whitespace_tokens(v, threads);
    EXPECT_EQ(p.tokens.tokens, c.tokens);
    EXPECT_EQ(p.tokens.counts, c.counts);
    EXPECT_EQ(p.tokens.lengths, c.lengths);
    EXPECT_EQ(p.tokens.total, c.total);
    EXPECT_EQ(p.groups, dp::duplicate_groups(v, threads));
  }
  const auto empty = dp::profile_whitespace({}, 2);
  EXPECT_TRUE(empty.tokens.tokens.empty() && empty.groups.empty());
}

#ifdef __linux__
#include <sys/mman.h>
#include <unistd.h>

TEST(DataProfile, TextsEndingAtAnUnreadablePage) {
  // Texts whose last byte is the last readable byte before a PROT_NONE page: reading past the
  // end would crash, and the words near the end (loaded the careful way) must merge with the
  // same words elsewhere (loaded 16 bytes at a time).
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  char* base = static_cast<char*>(
      mmap(nullptr, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  ASSERT_NE(base, MAP_FAILED);
  ASSERT_EQ(mprotect(base + page, page, PROT_NONE), 0);
  const std::vector<std::string> tails = {"w",
                                          "ab cd",
                                          "the cat sat on the mat",
                                          "a\xe3\x80\x80"
                                          "b",
                                          "seventeen_bytes_x",
                                          std::string(100, 'k') + " fin",
                                          "x\xc2\xa0",
                                          "ab nine_byte",
                                          "fifteen_bytes_x",
                                          "a sixteen_bytes_xx",
                                          "tri"};
  for (const auto& tail : tails) {
    char* start = base + page - tail.size();
    std::memcpy(start, tail.data(), tail.size());
    const std::string copy = tail + " " + tail;  // the same words on ordinary memory
    const std::vector<std::string_view> v = {std::string_view(copy),
                                             std::string_view(start, tail.size())};
    expect_counts_match_reference(v, dp::count_whitespace_tokens(v, 1));
    const auto p = dp::profile_whitespace(v, 1);
    EXPECT_EQ(p.groups, (std::vector<int64_t>{0, 1}));
    EXPECT_EQ(dp::hash_bytes(start, tail.size()), dp::hash_bytes(tail.data(), tail.size()));
  }
  munmap(base, 2 * page);
}
#endif

TEST(DataProfile, DuplicateSummaryEqualsReference) {
  const auto texts = random_texts(3000, 17);
  const auto groups = dp::duplicate_groups(views(texts), 2);
  std::vector<int64_t> codes(texts.size());
  std::mt19937 rng(2);
  for (auto& c : codes) c = static_cast<int64_t>(rng() % 3) - 1;
  std::map<int64_t, int64_t> size;
  std::map<int64_t, std::set<int64_t>> labels;
  for (size_t i = 0; i < texts.size(); ++i) {
    ++size[groups[i]];
    labels[groups[i]].insert(codes[i]);
  }
  // Reference order: count descending, then first index ascending.
  std::vector<std::pair<int64_t, int64_t>> ref;  // (-count, first)
  for (const auto& [g, c] : size) {
    if (c > 1) ref.emplace_back(-c, g);
  }
  std::sort(ref.begin(), ref.end());
  const auto s =
      dp::duplicate_summary(groups.data(), static_cast<int64_t>(groups.size()), codes.data());
  const auto u = dp::duplicate_summary(groups.data(), static_cast<int64_t>(groups.size()), nullptr);
  ASSERT_EQ(s.first.size(), ref.size());
  ASSERT_FALSE(ref.empty());
  int conflicting = 0;
  for (size_t k = 0; k < ref.size(); ++k) {
    EXPECT_EQ(s.first[k], ref[k].second);
    EXPECT_EQ(s.count[k], -ref[k].first);
    EXPECT_EQ(s.n_labels[k], static_cast<int64_t>(labels[ref[k].second].size()));
    conflicting += s.n_labels[k] > 1;
    EXPECT_EQ(u.first[k], s.first[k]);
    EXPECT_EQ(u.n_labels[k], 0);
  }
  EXPECT_GT(conflicting, 0);
  const std::vector<int64_t> bad = {0, 2, 1};    // points forward
  const std::vector<int64_t> chain = {0, 0, 1};  // 1 is not a first occurrence
  EXPECT_THROW(dp::duplicate_summary(bad.data(), 3, nullptr), std::invalid_argument);
  EXPECT_THROW(dp::duplicate_summary(chain.data(), 3, nullptr), std::invalid_argument);
  EXPECT_TRUE(dp::duplicate_summary(nullptr, 0, nullptr).first.empty());
}
