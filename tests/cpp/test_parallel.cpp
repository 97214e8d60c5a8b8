#include <gtest/gtest.h>

#include "core/common/parallel.hpp"

TEST(Parallel, ExplicitThreadCountIsHonoured) {
  EXPECT_EQ(llmdbg::openmp_team_size(1), 1);
  EXPECT_EQ(llmdbg::openmp_team_size(3), 3);
  EXPECT_EQ(llmdbg::resolve_threads(4), 4);
  EXPECT_EQ(llmdbg::resolve_threads(0), llmdbg::openmp_max_threads());
}

// Huge requests (100000 threads) crashed OpenMP; they are clamped to four per processor.
TEST(Parallel, HugeThreadCountsAreClamped) {
  EXPECT_EQ(llmdbg::resolve_threads(100000), llmdbg::max_threads());
  EXPECT_GE(llmdbg::max_threads(), 4);
  EXPECT_LE(llmdbg::openmp_team_size(100000), llmdbg::max_threads());
}
