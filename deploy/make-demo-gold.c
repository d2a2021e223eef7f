/* make-demo-gold — writes a small bootable gold image for demos and tests.
 *
 *   make-demo-gold OUTPUT.qcow2 [SIZE_MIB]                (default 64)
 *   make-demo-gold --writer MIB OUTPUT.qcow2 [SIZE_MIB]
 *
 * --writer makes a guest that, on a key press, writes MIB mebibytes to its
 * disk from 1 MiB on (BIOS int 13h extended writes of 32 KiB, a non-zero
 * pattern) and then powers off; when a write fails it prints "E" and halts
 * without powering off. Tests use it to fill a datastore from inside a
 * guest: a guest that powers off finished every write.
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

/* The writer, assembled from this source with GNU as (.code16) and ld
 * (-Ttext 0 --oformat binary); the addresses are the sector's at 0x7c00.
 *
 *     cli; xor ax,ax; mov ds,ax; mov ss,ax; mov sp,0x7c00; sti
 *     mov [drive],dl                   ; the boot drive the BIOS passed
 *     mov si,msg / print: lodsb; test al,al; jz wait; int 10h/0Eh; jmp print
 *     wait: sti; hlt; int 16h/01h; jz wait; int 16h/00h   ; a key, consumed
 *     mov ax,0x1000; mov es,ax; xor di,di; mov cx,0x4000; mov ax,0xa55a; rep stosw
 *     mov cx,[count]                   ; chunks of 64 sectors (32 KiB)
 *     wloop: push cx; mov si,dap; mov ax,0x4300; mov dl,[drive]; int 13h; pop cx
 *            jc failed; add word [dap+8],64; adc word [dap+10],0; loop wloop
 *     out 0x604 and 0xb004 <- 0x2000  ; ACPI S5: power off
 *     halt: cli; hlt; jmp halt
 *     failed: int 10h/0Eh 'E'; jmp halt
 *     count: dw N  (offset 0x74)   drive: db 0x80, 0
 *     dap: db 0x10,0; dw 64; dw 0x0000,0x1000; dq 2048
 *     msg: "vdipool writer desktop - press a key to write" CR LF NUL */
static const unsigned char writer[] = {
    0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0x8e, 0xd0, 0xbc, 0x00, 0x7c, 0xfb, 0x88, 0x16, 0x76, 0x7c,
    0xbe, 0x88, 0x7c, 0xac, 0x84, 0xc0, 0x74, 0x09, 0xb4, 0x0e, 0xbb, 0x07, 0x00, 0xcd, 0x10,
    0xeb, 0xf2, 0xfb, 0xf4, 0xb4, 0x01, 0xcd, 0x16, 0x74, 0xf8, 0x30, 0xe4, 0xcd, 0x16, 0xb8,
    0x00, 0x10, 0x8e, 0xc0, 0x31, 0xff, 0xb9, 0x00, 0x40, 0xb8, 0x5a, 0xa5, 0xf3, 0xab, 0x8b,
    0x0e, 0x74, 0x7c, 0x51, 0xbe, 0x78, 0x7c, 0xb8, 0x00, 0x43, 0x8a, 0x16, 0x76, 0x7c, 0xcd,
    0x13, 0x59, 0x72, 0x1b, 0x83, 0x06, 0x80, 0x7c, 0x40, 0x83, 0x16, 0x82, 0x7c, 0x00, 0xe2,
    0xe4, 0xb8, 0x00, 0x20, 0xba, 0x04, 0x06, 0xef, 0xba, 0x04, 0xb0, 0xef, 0xfa, 0xf4, 0xeb,
    0xfc, 0xb8, 0x45, 0x0e, 0xbb, 0x07, 0x00, 0xcd, 0x10, 0xeb, 0xf2, 0x00, 0x02, 0x80, 0x00,
    0x10, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x76, 0x64, 0x69, 0x70, 0x6f, 0x6f, 0x6c, 0x20, 0x77, 0x72, 0x69, 0x74, 0x65, 0x72,
    0x20, 0x64, 0x65, 0x73, 0x6b, 0x74, 0x6f, 0x70, 0x20, 0x2d, 0x20, 0x70, 0x72, 0x65, 0x73,
    0x73, 0x20, 0x61, 0x20, 0x6b, 0x65, 0x79, 0x20, 0x74, 0x6f, 0x20, 0x77, 0x72, 0x69, 0x74,
    0x65, 0x0d, 0x0a, 0x00,
};
#define WRITER_COUNT_OFFSET 0x74

int main(int argc, char **argv)
{
    long write_mib = 0;
    if (argc >= 3 && !strcmp(argv[1], "--writer")) {
        write_mib = strtol(argv[2], NULL, 10);
        if (write_mib < 1 || write_mib > 2047) {
            fprintf(stderr, "make-demo-gold: --writer takes 1..2047 (MiB to write)\n");
            return 2;
        }
        argc -= 2;
        argv += 2;
    }
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: make-demo-gold [--writer MIB] OUTPUT.qcow2 [SIZE_MIB]\n");
        return 2;
    }
    const char *out = argv[1];
    long mib = argc == 3 ? strtol(argv[2], NULL, 10) : 64;
    if (mib < 1 || mib > 65536) {
        fprintf(stderr, "make-demo-gold: SIZE_MIB must be 1..65536\n");
        return 2;
    }
    if (write_mib && mib < write_mib + 1) {
        fprintf(stderr, "make-demo-gold: a writer of %ld MiB needs a disk of at least %ld MiB\n",
                write_mib, write_mib + 1);
        return 2;
    }
    if (access(out, F_OK) == 0) {
        fprintf(stderr, "make-demo-gold: %s already exists\n", out);
        return 1;
    }
    unsigned char sector[512] = { 0 };
    if (write_mib) {
        memcpy(sector, writer, sizeof writer);
        unsigned chunks = (unsigned)write_mib * 32; /* 32 KiB each */
        sector[WRITER_COUNT_OFFSET] = (unsigned char)(chunks & 0xff);
        sector[WRITER_COUNT_OFFSET + 1] = (unsigned char)(chunks >> 8);
    } else {
        memcpy(sector, code, sizeof code);
        memcpy(sector + sizeof code, message, sizeof message); /* with its NUL */
    }
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
    if (write_mib)
        printf("%s: bootable writer gold, %ld MiB, writes %ld MiB on a key press\n", out, mib,
               write_mib);
    else
        printf("%s: bootable demo gold, %ld MiB\n", out, mib);
    return 0;
}
