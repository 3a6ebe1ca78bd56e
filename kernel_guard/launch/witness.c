/* kernel-guard-witness: the supervisor's witness, as a program of its own.
 *
 * Why this exists: the witness only waits for the supervisor to end, and when
 * it ends without saying "stopped" (SIGKILL, a crash), has its loss recorded.
 * A forked Python witness kept private copies of every page the supervisor
 * wrote after the fork (reference counts, its heap): about 4.5 MB of PSS per
 * kernel for a process that sleeps on a pipe.  This one is a few pages.
 *
 * The supervisor starts it before hardening itself (exec still works then),
 * with the read end of a pipe whose write end only the supervisor holds, and a
 * descriptor of the interpreter the supervisor runs (/proc/self/exe: the image
 * the OS runs, not a path).  In order, it
 *
 *   1. makes itself non-dumpable (no other process of its uid can open its
 *      memory or descriptors, nor ptrace it);
 *   2. moves the interpreter's descriptor to the number its filter names, and
 *      marks every descriptor it keeps close-on-exec;
 *   3. loads the filter the launcher compiled for it with libseccomp (handed
 *      over in hex): no execve at all, and execveat only of that descriptor
 *      with AT_EMPTY_PATH -- the one program it may ever start is the
 *      interpreter it was handed, opened before any notebook code ran;
 *   4. waits for the pipe to close; "stopped" before the close is a clean end,
 *      anything else a loss, which it has recorded by replacing itself
 *      (same pid, so the kernel's filter keeps guarding it) with the recorder:
 *      the interpreter running python -m kernel_guard.launch.witness, whose
 *      command line follows "--" on this one.
 *
 * Usage: kernel-guard-witness PIPE_FD EXEC_FD EXEC_AT FILTER_HEX -- ARGV...
 * Exit status: 0 after a clean end; 1 when a step failed (said on stderr);
 * 2 on a malformed command line.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

extern char **environ;

#define STOPPED "stopped"

static int fail(const char *what)
{
    fprintf(stderr, "kernel-guard-witness: %s: %s\n", what, strerror(errno));
    return 1;
}

/* A descriptor number written in decimal, or -1. */
static int parse_fd(const char *text)
{
    char *end;
    long value;

    errno = 0;
    value = strtol(text, &end, 10);
    if (errno || end == text || *end || value < 0 || value > INT_MAX)
        return -1;
    return (int)value;
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Load the BPF program given in lowercase hex (libseccomp's export, 8 bytes an
 * instruction) with no new privileges; -1 with errno set when it cannot be. */
static int load_filter(const char *hex)
{
    size_t length = strlen(hex), i;
    struct sock_fprog program;
    unsigned char *code;
    int result;

    if (length == 0 || length % (2 * sizeof(struct sock_filter))
        || length / (2 * sizeof(struct sock_filter)) > BPF_MAXINSNS) {
        errno = EINVAL;
        return -1;
    }
    code = malloc(length / 2);
    if (code == NULL)
        return -1;
    for (i = 0; i < length / 2; i++) {
        int high = hex_digit(hex[2 * i]), low = hex_digit(hex[2 * i + 1]);
        if (high < 0 || low < 0) {
            free(code);
            errno = EINVAL;
            return -1;
        }
        code[i] = (unsigned char)(high << 4 | low);
    }
    program.len = (unsigned short)(length / (2 * sizeof(struct sock_filter)));
    program.filter = (struct sock_filter *)code;
    result = prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    if (result == 0)
        result = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &program);
    free(code);
    return result;
}

/* Put the interpreter's descriptor at exec_at and mark both kept descriptors
 * close-on-exec (the recorder inherits neither); the pipe's number, or -1. */
static int place_descriptors(int pipe_fd, int exec_fd, int exec_at)
{
    if (pipe_fd == exec_at) {
        pipe_fd = fcntl(pipe_fd, F_DUPFD_CLOEXEC, exec_at + 1);
        if (pipe_fd < 0)
            return -1;
    }
    if (exec_fd != exec_at) {
        if (dup3(exec_fd, exec_at, O_CLOEXEC) < 0)
            return -1;
        close(exec_fd);
    } else if (fcntl(exec_at, F_SETFD, FD_CLOEXEC) < 0) {
        return -1;
    }
    if (fcntl(pipe_fd, F_SETFD, FD_CLOEXEC) < 0)
        return -1;
    return pipe_fd;
}

/* Read the pipe until it closes; whether the supervisor said exactly "stopped".
 * A read error counts as a loss: the record says more than it should rather than less. */
static int ended_cleanly(int pipe_fd)
{
    char said[sizeof(STOPPED)], chunk[64];
    size_t have = 0;
    ssize_t got;

    for (;;) {
        got = read(pipe_fd, chunk, sizeof(chunk));
        if (got == 0)
            break;
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return 0;
        }
        if (have + (size_t)got > sizeof(STOPPED) - 1)
            return 0;
        memcpy(said + have, chunk, (size_t)got);
        have += (size_t)got;
    }
    return have == sizeof(STOPPED) - 1 && memcmp(said, STOPPED, have) == 0;
}

int main(int argc, char **argv)
{
    int pipe_fd, exec_fd, exec_at;

    if (argc < 7 || strcmp(argv[5], "--") != 0) {
        fprintf(stderr, "usage: kernel-guard-witness PIPE_FD EXEC_FD EXEC_AT FILTER_HEX -- ARGV...\n"
                        "(started by the kernel_guard supervisor, not by hand)\n");
        return 2;
    }
    pipe_fd = parse_fd(argv[1]);
    exec_fd = parse_fd(argv[2]);
    exec_at = parse_fd(argv[3]);
    if (pipe_fd < 0 || exec_fd < 0 || exec_at < 3 || pipe_fd == exec_fd) {
        fprintf(stderr, "kernel-guard-witness: PIPE_FD, EXEC_FD and EXEC_AT must be distinct "
                        "descriptor numbers (EXEC_AT above 2)\n");
        return 2;
    }
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        return fail("cannot make itself non-dumpable");
    pipe_fd = place_descriptors(pipe_fd, exec_fd, exec_at);
    if (pipe_fd < 0)
        return fail("cannot place its descriptors");
    if (load_filter(argv[4]) != 0)
        return fail("cannot load its filter");
    signal(SIGTERM, SIG_DFL);
    if (ended_cleanly(pipe_fd))
        return 0;
    syscall(SYS_execveat, (long)exec_at, "", argv + 6, environ, (long)AT_EMPTY_PATH);
    return fail("cannot start the recorder of the supervisor's loss");
}
