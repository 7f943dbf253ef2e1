/* The few libc declarations libfvad (webrtc-vad's C code) needs on
 * wasm32-unknown-unknown, which has no libc: malloc and free are exported by
 * the Rust side (src/lib.rs), memset/memcpy come from compiler-builtins. */
#include <stddef.h>
void *malloc(size_t n);
void free(void *p);
