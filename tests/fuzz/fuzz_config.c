/* fuzz_config — libFuzzer target for the config parse+validate path.
 * Seeds: tests/fuzz/corpus/config (the shipped example files).
 * Run longer: build-fuzz/tests/fuzz/fuzz_config -max_total_time=3600 CORPUS_DIR */
#include "vdi_config.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536)
        return 0;
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    /* @include would read arbitrary files (think /dev/zero): not the parser's
     * input, so leave it out. */
    if (strstr(text, "@include")) {
        free(text);
        return 0;
    }
    vdi_config_options opts = { .skip_filesystem_checks = true };
    vdi_config *cfg = NULL;
    vdi_config_errors *errors = NULL;
    if (vdi_config_parse_string(text, "<fuzz>", &opts, &cfg, &errors) == 0) {
        /* A valid config must diff cleanly against itself. */
        vdi_config_diff *diff = NULL;
        if (vdi_config_diff_new(cfg, cfg, &diff) == 0 && vdi_config_diff_count(diff) != 0)
            abort();
        vdi_config_diff_free(diff);
        vdi_config_free(cfg);
    } else {
        if (vdi_config_errors_count(errors) == 0)
            abort(); /* a refusal always says why */
        vdi_config_errors_free(errors);
    }
    free(text);
    return 0;
}
