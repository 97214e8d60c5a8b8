// Built only for the sanitized run (LLMDBG_SANITIZE=ON): reads one element past a heap buffer.
// CTest expects it to fail (WILL_FAIL), which proves AddressSanitizer is really active; a build
// without it would read garbage, exit 0 and make that test fail.
#include <cstdio>
#include <vector>

int main(int argc, char**) {
  std::vector<int>* v = new std::vector<int>(4, 1);
  const int* data = v->data();
  volatile int past = data[4 + argc - 1];  // argc == 1: index 4, one past the end
  std::printf("read %d past the end without a report\n", past);
  delete v;
  return 0;
}
