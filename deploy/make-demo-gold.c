/* make-demo-gold — writes a small bootable gold image for demos and tests.
 *
 *   make-demo-gold OUTPUT.qcow2 [SIZE_MIB]   (default 64)
 *
 * The disk holds one boot sector of ours (16-bit x86, hand-assembled below):
 * it prints "vdipool demo desktop - press a key to log off", waits for a key
 * with `sti; hlt` between polls of the BIOS keyboard (so the guest uses no
 * CPU while it waits), then powers the VM off through ACPI by writing
 * SLP_EN (0x2000) to the PM1a control port of both QEMU machine types:
 * 0x604 (q35/ICH9) and 0xB004 (pc/PIIX4). The domain needs <acpi/>.
 * The raw sector is converted to qcow2 with qemu-img. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const unsigned char code[] = {
    0xFA,             /* 0x00 cli                                 */
    0x31, 0xC0,       /* 0x01 xor ax, ax                          */
    0x8E, 0xD8,       /* 0x03 mov ds, ax                          */
    0x8E, 0xD0,       /* 0x05 mov ss, ax                          */
    0xBC, 0x00, 0x7C, /* 0x07 mov sp, 0x7c00                      */
    0xFB,             /* 0x0a sti                                 */
    0xBE, 0x33, 0x7C, /* 0x0b mov si, msg (0x7c00 + 0x33)         */
    0xAC,             /* 0x0e print: lodsb                        */
    0x84, 0xC0,       /* 0x0f test al, al                         */
    0x74, 0x09,       /* 0x11 jz wait (0x1c)                      */
    0xB4, 0x0E,       /* 0x13 mov ah, 0x0e  (teletype output)     */
    0xBB, 0x07, 0x00, /* 0x15 mov bx, 0x0007                      */
    0xCD, 0x10,       /* 0x18 int 0x10                            */
    0xEB, 0xF2,       /* 0x1a jmp print (0x0e)                    */
    0xFB,             /* 0x1c wait: sti                           */
    0xF4,             /* 0x1d hlt   (until the next interrupt)    */
    0xB4, 0x01,       /* 0x1e mov ah, 0x01  (keystroke waiting?)  */
    0xCD, 0x16,       /* 0x20 int 0x16                            */
    0x74, 0xF8,       /* 0x22 jz wait (0x1c)                      */
    0xB8, 0x00, 0x20, /* 0x24 mov ax, 0x2000 (SLP_EN, S5)         */
    0xBA, 0x04, 0x06, /* 0x27 mov dx, 0x604                       */
    0xEF,             /* 0x2a out dx, ax                          */
    0xBA, 0x04, 0xB0, /* 0x2b mov dx, 0xb004                      */
    0xEF,             /* 0x2e out dx, ax                          */
    0xFA,             /* 0x2f halt: cli                           */
    0xF4,             /* 0x30 hlt                                 */
    0xEB, 0xFC,       /* 0x31 jmp halt (0x2f)                     */
};

static const char message[] = "vdipool demo desktop - press a key to log off\r\n";

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: make-demo-gold OUTPUT.qcow2 [SIZE_MIB]\n");
        return 2;
    }
    const char *out = argv[1];
    long mib = argc == 3 ? strtol(argv[2], NULL, 10) : 64;
    if (mib < 1 || mib > 65536) {
        fprintf(stderr, "make-demo-gold: SIZE_MIB must be 1..65536\n");
        return 2;
    }
    if (access(out, F_OK) == 0) {
        fprintf(stderr, "make-demo-gold: %s already exists\n", out);
        return 1;
    }
    unsigned char sector[512] = { 0 };
    memcpy(sector, code, sizeof code);
    memcpy(sector + sizeof code, message, sizeof message); /* with its NUL */
    sector[510] = 0x55;
    sector[511] = 0xAA;

    char raw[4200];
    snprintf(raw, sizeof raw, "%s.raw.%ld", out, (long)getpid());
    int fd = open(raw, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd < 0 || write(fd, sector, sizeof sector) != (ssize_t)sizeof sector ||
        ftruncate(fd, (off_t)mib << 20) < 0 || close(fd) < 0) {
        fprintf(stderr, "make-demo-gold: cannot write %s: %s\n", raw, strerror(errno));
        unlink(raw);
        return 1;
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", out, (long)getpid());
    pid_t pid = fork();
    if (pid == 0) {
        execlp("qemu-img", "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, tmp,
               (char *)NULL);
        _exit(127);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    unlink(raw);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "make-demo-gold: qemu-img convert failed (install qemu-utils)\n");
        unlink(tmp);
        return 1;
    }
    fd = open(tmp, O_RDONLY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    if (rename(tmp, out) < 0) {
        fprintf(stderr, "make-demo-gold: cannot rename to %s: %s\n", out, strerror(errno));
        unlink(tmp);
        return 1;
    }
    printf("%s: bootable demo gold, %ld MiB\n", out, mib);
    return 0;
}
