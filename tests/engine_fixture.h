/* engine_fixture.h — see engine_fixture.c. */
#ifndef VDI_ENGINE_FIXTURE_H
#define VDI_ENGINE_FIXTURE_H

#include "helpers.h"
#include "vdi_engine.h"

#include <stdbool.h>

extern char *dir;                    /* this test's directory */
extern char state[4200], gold[4200]; /* its state dir and gold (not sealed yet) */
extern vdi_catalog *cat;             /* open on state */

char *path_in(const char *name); /* DIR/NAME, rotating static buffers */
void open_cat(void);
void engine_setup(void);
void engine_teardown(void);
void seal_gold(void);
void clone_to(const char *parent, const char *child);
int clone_rc(const char *parent, const char *child, vdi_error *err);
bool immutable(const char *path);
void set_immutable(const char *path, bool on);
/* qemu-io commands on a file, failing the test when they fail. */
void io(const char *path, const char *cmds);
int merge(const char *child, vdi_merge_mode mode, const char *target, vdi_error *err);

#endif
