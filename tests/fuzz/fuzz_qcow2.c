/* fuzz_qcow2 — libFuzzer target for the qcow2 header parser, which reads
 * files written by guests and strangers.
 * Seeds: tests/fuzz/corpus/qcow2 (headers of real children).
 * Run longer: build-fuzz/tests/fuzz/fuzz_qcow2 -max_total_time=3600 CORPUS_DIR */
#include "qcow2.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qcow2_header h;
    vdi_error err = { 0 };
    /* The file as long as the input, and a file far longer than what was read. */
    if (qcow2_parse_header(data, size, size, &h, &err) < 0 && err.message[0] == '\0')
        abort();
    vdi_error_clear(&err);
    if (qcow2_parse_header(data, size, (uint64_t)size << 20, &h, &err) < 0 && err.message[0] == '\0')
        abort();
    return 0;
}
