// The data-profiling counters against plain std:: references: whitespace splitting (including
// the Unicode spaces Python's str.split() knows), token and id counts, duplicate groups under
// forced hash collisions, thread-count determinism and the error paths.
#include <gtest/gtest.h>

#include <map>
#include <random>
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
  const std::vector<std::string> words = {"a", "the", "cat", "Cat", "dogs!", "über", "naïve", "x1", "long_token_12345"};
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
  const std::string text = std::string("a\x1c") + "b\xc2\x85" "c\xc2\xa0" "d\xe1\x9a\x80" "e\xe2\x80\x80" "f\xe2\x80\x8a" "g\xe2\x80\xa8" "h\xe2\x80\xa9" "i\xe2\x80\xaf" "j\xe2\x81\x9f" "k\xe3\x80\x80" "l";
  const std::vector<std::string> texts = {text};
  const auto r = dp::count_whitespace_tokens(views(texts), 1);
  ASSERT_EQ(r.tokens.size(), 12u);
  EXPECT_EQ(r.tokens[0], "a");
  EXPECT_EQ(r.tokens[11], "l");
  // U+200B (zero width space) and U+00E9 (é, lead byte 0xc3) are not whitespace.
  const std::vector<std::string> other = {"a\xe2\x80\x8b" "b \xc3\xa9 \xc2\xa9"};
  const auto q = dp::count_whitespace_tokens(views(other), 1);
  ASSERT_EQ(q.tokens.size(), 3u);
  EXPECT_EQ(q.tokens[0], "a\xe2\x80\x8b" "b");
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
  for (int i = 0; i < 5000; ++i) texts.push_back("w" + std::to_string(i) + " w" + std::to_string(i / 2));
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
  for (size_t i = 0; i < texts.size(); ++i) ref.push_back(first.emplace(texts[i], static_cast<int64_t>(i)).first->second);
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
