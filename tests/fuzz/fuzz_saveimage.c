/* fuzz_saveimage — libFuzzer target for the libvirt save image parser, which
 * reads memory images from a datastore (a file anyone with access to the
 * datastore could have changed).
 * Seeds: tests/fuzz/corpus/saveimage (a header with XML and cookie).
 * Run longer: build-fuzz/tests/fuzz/fuzz_saveimage -max_total_time=3600 CORPUS_DIR */
#include "vdi_engine.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    vdi_save_image img;
    vdi_error err = {0};
    /* The file exactly as long as the input, and a file far longer. */
    uint64_t sizes[2] = {size, (uint64_t)size << 20};
    for (int i = 0; i < 2; i++) {
        int rc = vdi_save_image_parse(data, size, sizes[i], &img, &err);
        if (rc < 0 && err.message[0] == '\0')
            abort();
        if (rc == 0) {
            /* What was parsed lies inside what was given. */
            if (!img.xml || img.stream_offset > size || strlen(img.xml) >= img.data_len)
                abort();
            vdi_save_image_clear(&img);
        }
        vdi_error_clear(&err);
    }
    return 0;
}
