#pragma once
// Numbers in error messages: "%.6g" (std::to_string prints 1e199 with 200 digits and 1e-300 as
// 0.000000).
#include <cstdio>
#include <string>

namespace llmdbg::tsne {

inline std::string num(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", x);
  return buf;
}

}  // namespace llmdbg::tsne
