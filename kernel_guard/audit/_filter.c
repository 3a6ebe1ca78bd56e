/* kernel_guard.audit._filter: the audit layer's event filter, as a runtime audit hook.
 *
 * Why this exists: a Python hook added with sys.addaudithook costs every audited
 * event a new event-name string, a Python call and a frame -- about 0.4 us,
 * whether or not the hook cares.  A logging record raises five events, an
 * import several.  A runtime hook (PySys_AddAuditHook) receives the event name
 * as a C string before any Python object is made for it, so the events the
 * guard has no interest in (nearly all of them) cost a few string compares.
 *
 * The policy stays in Python: for an interesting event this hook calls the
 * Python callback it was given, with an interned name and the event's argument
 * tuple; an exception from the callback aborts the audited operation, as it
 * does from a Python hook.  Three decisions are taken here, each the answer
 * persistence.py's _check_open, _check_change or _check_move gives, and each only
 * ever "allowed, nothing to record" (anything else goes to the policy):
 *
 * - reading a file: a str path not named like a process's environ or mem,
 *   opened without write flags;
 * - writing an ordinary file: a str path, not named like environ or mem, whose
 *   absolute form is not a persistence path (the policy's own folders, files and
 *   segment-aware glob pattern, given to add_hook; a path that starts with none of
 *   them and has no persistence name is settled by a search of their sorted starts)
 *   and whose components hold no symbolic link, so the path the kernel resolves is
 *   the one judged.  One
 *   openat2(RESOLVE_NO_SYMLINKS) answers that where the system call is allowed,
 *   else an lstat of each component does, as realpath(3) would (see no_links);
 * - removing, renaming, linking, copying or changing the mode of ordinary places
 *   (the events and argument indexes the policy gives as ``ends``): each end a str
 *   path, relative to the working folder or a folder descriptor (named by the
 *   kernel, /proc/self/fd), that is no persistence path, no folder holding one (a
 *   search of the same sorted starts) and holds no symbolic link.  In Python these
 *   take two realpath calls and five pattern matches: 13 us added to an 8 us
 *   unlink on tmpfs, against 3 us here.
 *
 * A filter added as record-only (the launcher's first hook) passes only the
 * events it names for that case once an enforcing filter is added after it:
 * from then on the enforcing one records everything.
 *
 * Runtime hooks cannot be removed and hold their callback in C, out of reach
 * of Python code; the callback's own function object is guarded by the policy
 * (object.__setattr__ on it is an interesting event).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_NAMES 64
#define MAX_FILTERS 16
#define NAME_BUCKETS 64  /* a power of two */

/* What makes a write-open a persistence write: the policy's (dirs, globs, files),
 * and, when the policy gives them, the texts every persistence path starts with. */
typedef struct {
    PyObject *dirs;   /* tuple of str, each ending with "/" */
    PyObject *match;  /* the compiled glob pattern's bound match() */
    PyObject *files;  /* frozenset of str */
    char **starts;    /* file-system bytes, sorted by strcmp, none the start of another */
    Py_ssize_t nstarts;  /* -1: none given, every write-open takes the whole comparison */
} writes_t;

typedef struct {
    PyInterpreterState *interp;  /* the interpreter whose objects the callback is */
    PyObject *callback;          /* strong reference, never released */
    Py_ssize_t count;
    const char *names[MAX_NAMES];  /* UTF-8 of the interned strings below */
    PyObject *interned[MAX_NAMES];
    /* the names by their first four bytes: a bucket's first index, each name's next
     * (-1 ends); an event compares with the few names that start as it does */
    signed char bucket_head[NAME_BUCKETS];
    signed char bucket_next[MAX_NAMES];
    int seen_check;              /* set by the install-time check event */
    writes_t writes;             /* dirs == NULL: every write-open goes to the callback */
    int record_only;             /* quieted once an enforcing filter is added after it */
    int quiet;
    char kept[MAX_NAMES];        /* the names that still pass once quiet */
    /* by name: the ends a change event touches, (argument index of the path, of its
     * dir_fd or -1), settled here when every one is ordinary; nends 0: the policy's */
    signed char ends[MAX_NAMES][2][2];
    unsigned char nends[MAX_NAMES];
} filter_t;

/* every filter added, for the record-only ones an enforcing filter quiets */
static filter_t *filters[MAX_FILTERS];
static int filter_count;

static const char CHECK_EVENT[] = "kernel_guard.audit._filter.check";

static const int WRITE_FLAGS = O_WRONLY | O_RDWR | O_APPEND | O_CREAT | O_TRUNC;

/* Whether an open event only reads an ordinary file: (path, mode, flags). */
static int
plain_read(PyObject *args)
{
    if (!PyTuple_CheckExact(args) || PyTuple_GET_SIZE(args) != 3) {
        return 0;
    }
    PyObject *path = PyTuple_GET_ITEM(args, 0);
    PyObject *mode = PyTuple_GET_ITEM(args, 1);
    PyObject *flags = PyTuple_GET_ITEM(args, 2);
    if (!PyUnicode_CheckExact(path)) {
        return 0;  /* bytes or an fd: left to the policy */
    }
    if (PyUnicode_CheckExact(mode)) {
        const char *m = PyUnicode_AsUTF8(mode);
        if (m == NULL) {
            PyErr_Clear();
            return 0;
        }
        if (strpbrk(m, "wax+") != NULL) {
            return 0;
        }
    }
    else if (mode == Py_None && PyLong_CheckExact(flags)) {
        long f = PyLong_AsLong(flags);
        if (f == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        if (f & WRITE_FLAGS) {
            return 0;
        }
    }
    else {
        return 0;
    }
    return 1;
}

/* /proc/<pid>/environ and /mem are credentials: the policy decides every read of a
 * file named so, however the path is spelled (relative, "//", links in its folders),
 * and resolves it. */
static int
may_be_credential(PyObject *path)
{
    /* every open raises this check: a last letter other than environ's or mem's
     * settles it without a comparison */
    Py_ssize_t n = PyUnicode_GetLength(path);
    Py_UCS4 last = n > 0 ? PyUnicode_ReadChar(path, n - 1) : 0;
    if (PyErr_Occurred()) {
        PyErr_Clear();  /* cannot tell: compare below */
    }
    else if (last != 'n' && last != 'm') {
        return 0;
    }
    static PyObject *suffixes[2] = {NULL, NULL};
    if (suffixes[0] == NULL) {
        suffixes[0] = PyUnicode_InternFromString("environ");
        suffixes[1] = PyUnicode_InternFromString("mem");
        if (suffixes[0] == NULL || suffixes[1] == NULL) {
            PyErr_Clear();
            return 1;  /* cannot tell: let the policy look */
        }
    }
    for (int k = 0; k < 2; k++) {
        Py_ssize_t r = PyUnicode_Tailmatch(path, suffixes[k], 0, PY_SSIZE_T_MAX, 1);
        if (r != 0) {
            if (r < 0) {
                PyErr_Clear();
            }
            return 1;
        }
    }
    return 0;
}

/* -- opening a file for writing ------------------------------------------------ */

/* texts the persistence check compares names with, made once by add_hook */
static PyObject *pth_suffix, *site_prefix, *user_prefix;

/* Whether an open event writes: a mode with "w", "a", "x" or "+", or (os.open's
 * event, mode None) write flags.  *relative_ok is 0 for os.open, whose event
 * leaves out dir_fd: the policy judges a relative path against every open folder. */
static int
opens_for_writing(PyObject *mode, PyObject *flags, int *relative_ok)
{
    if (PyUnicode_CheckExact(mode)) {
        const char *m = PyUnicode_AsUTF8(mode);
        if (m == NULL) {
            PyErr_Clear();
            return 0;
        }
        *relative_ok = 1;
        return strpbrk(m, "wax+") != NULL;
    }
    if (mode == Py_None && PyLong_CheckExact(flags)) {
        long f = PyLong_AsLong(flags);
        if (f == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        *relative_ok = 0;
        return (f & WRITE_FLAGS) != 0;
    }
    return 0;
}

/* Whether the absolute path s has the form os.path.normpath gives it: one leading
 * slash, no "//", "/./" or "/../", no trailing "/", "/." or "/..".  Then
 * os.path.abspath leaves it as it is and, without links, so does realpath. */
static int
normal_form(const char *s, size_t len)
{
    if (len < 2 || s[0] != '/' || s[len - 1] == '/') {
        return 0;
    }
    for (size_t i = 0; i < len; i++) {
        const char *next = s + i + 1;
        if (s[i] == '/' && (next[0] == '/'
                            || (next[0] == '.' && (next[1] == '/' || next[1] == '\0'))
                            || (next[0] == '.' && next[1] == '.' && (next[2] == '/' || next[2] == '\0')))) {
            return 0;
        }
    }
    return 1;
}

/* The file-system bytes of the str os.path.abspath makes of p (a path's bytes, len
 * long), when that is already in normal form: p itself when absolute, else joined
 * (PATH_MAX bytes), with its length in *outlen; NULL when not (the policy decides).
 * A relative path is joined to getcwd(2)'s answer, as os.getcwd() decodes it: the
 * kernel's own name for the folder, built from its entries, so no component of it
 * is a link and only the relative part needs the link test. */
static const char *
absolute_bytes(const char *p, size_t len, char *joined, size_t *outlen)
{
    if (p[0] == '/') {
        *outlen = len;
        return normal_form(p, len) ? p : NULL;
    }
    /* a deleted working folder fails here, as os.getcwd() fails in the policy */
    if (getcwd(joined, PATH_MAX) == NULL || joined[0] != '/') {
        return NULL;
    }
    size_t cwdlen = strlen(joined) == 1 ? 0 : strlen(joined);  /* "/" joins as "" */
    if (cwdlen + 1 + len >= PATH_MAX) {
        return NULL;
    }
    joined[cwdlen] = '/';
    memcpy(joined + cwdlen + 1, p, len + 1);
    *outlen = cwdlen + 1 + len;
    return normal_form(joined, *outlen) ? joined : NULL;
}

/* str.startswith for one prefix: a compare of the two strings' storage when they
 * share a kind (nearly always: ASCII paths and folders). */
static int
starts_with(PyObject *s, PyObject *prefix)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(prefix);
    int kind = PyUnicode_KIND(s);
    if (kind != PyUnicode_KIND(prefix)) {
        return PyUnicode_Tailmatch(s, prefix, 0, PyUnicode_GET_LENGTH(s), -1) != 0;
    }
    return n <= PyUnicode_GET_LENGTH(s) && memcmp(PyUnicode_DATA(s), PyUnicode_DATA(prefix), (size_t)n * kind) == 0;
}

/* Whether the absolute path a is a persistence path as is_persistence_path judges
 * one spelling: a .pth, sitecustomize.* or usercustomize.* name, a protected file,
 * a path beneath a protected folder, or a match of the segment-aware glob pattern
 * (the policy's own compiled pattern).  An error counts as "yes": the policy decides. */
static int
persistence_name(const writes_t *w, PyObject *a)
{
    Py_ssize_t len = PyUnicode_GET_LENGTH(a);
    Py_ssize_t name = PyUnicode_FindChar(a, '/', 0, len, -1) + 1;
    int found = name <= 0
        || PyUnicode_Tailmatch(a, pth_suffix, name, len, 1) != 0
        || PyUnicode_Tailmatch(a, site_prefix, name, len, -1) != 0
        || PyUnicode_Tailmatch(a, user_prefix, name, len, -1) != 0
        || PySet_Contains(w->files, a) != 0;
    for (Py_ssize_t k = 0; !found && k < PyTuple_GET_SIZE(w->dirs); k++) {
        found = starts_with(a, PyTuple_GET_ITEM(w->dirs, k));
    }
    if (!found) {
        PyObject *m = PyObject_CallOneArg(w->match, a);
        found = m != Py_None;
        Py_XDECREF(m);
    }
    PyErr_Clear();
    return found;
}

/* How many of the sorted starts are below key (with or_equal: not above it): a
 * binary search of one array. */
static Py_ssize_t
starts_below(const writes_t *w, const char *key, int or_equal)
{
    Py_ssize_t lo = 0, hi = w->nstarts;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        int c = strcmp(w->starts[mid], key);
        if (c < 0 || (or_equal && c == 0)) {
            lo = mid + 1;
        }
        else {
            hi = mid;
        }
    }
    return lo;
}

/* Whether the absolute path a (file-system bytes) may be a persistence path: its
 * name is a .pth, sitecustomize.* or usercustomize.* one, or it starts with one of
 * the texts every persistence path starts with.  A "no" is certain (a str that starts
 * with another starts so in bytes); a "yes" takes persistence_name's comparison.
 * Why: that comparison (a folder object each, a set, the glob pattern's match) took
 * 0.45 us of a write-open's 1.3 on tmpfs, and several times that in a kernel after
 * a write that truncated a file on ext4 (cold caches); a binary search in one sorted
 * array touches a few lines. */
static int
may_be_persistence(const writes_t *w, const char *a, size_t len)
{
    if (w->nstarts < 0) {
        return 1;
    }
    const char *name = strrchr(a, '/') + 1;
    size_t namelen = len - (size_t)(name - a);
    if ((namelen >= 4 && memcmp(name + namelen - 4, ".pth", 4) == 0)
            || strncmp(name, "sitecustomize.", 14) == 0 || strncmp(name, "usercustomize.", 14) == 0) {
        return 1;
    }
    /* in a sorted set where no text starts another, the one a starts with, if any,
     * is the greatest text not above a */
    Py_ssize_t lo = starts_below(w, a, 1);
    return lo > 0 && strncmp(w->starts[lo - 1], a, strlen(w->starts[lo - 1])) == 0;
}

/* Without openat2, or where a seccomp filter refuses it: an lstat of each leading
 * part of path (relative to the folder dirfd when relative), the test realpath(3)
 * makes. */
static int
no_links_walk(int dirfd, const char *path, size_t len)
{
    char part[PATH_MAX];
    memcpy(part, path, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (i < len && part[i] != '/') {
            continue;
        }
        struct stat st;
        char kept = part[i];
        part[i] = '\0';
        int failed = fstatat(dirfd, part, &st, AT_SYMLINK_NOFOLLOW);
        part[i] = kept;
        if (failed) {
            /* the rest is missing (realpath keeps it as written), or this part is a file
             * the kernel's walk stops at: no later part is ever resolved */
            return errno == ENOENT || errno == ENOTDIR;
        }
        if (S_ISLNK(st.st_mode)) {
            return 0;
        }
    }
    return 1;
}

/* cleared for good once openat2 fails as an unknown or forbidden call */
static int openat2_usable = 1;

struct open_how_v0 {
    unsigned long long flags, mode, resolve;
};
#define RESOLVE_NO_SYMLINKS_FLAG 0x04

/* Whether no component of path (absolute, or relative to the folder dirfd, the
 * working folder for AT_FDCWD, whose kernel name holds no link) is a symbolic link;
 * components after a missing one, or after a file, count as plain: realpath keeps
 * them, and no system call resolves them.  One system call: the kernel's own path
 * walk, told to fail on any link (the last component's included, which O_DIRECTORY
 * makes it follow) and to want a folder at the end, so that for a file it fails
 * (ENOTDIR) after the walk and before it makes a descriptor to close (a quarter of
 * the test's cost, measured); for a single component an lstat is that call, and
 * cheaper. */
static int
no_links(int dirfd, const char *path, size_t len)
{
#ifdef SYS_openat2
    if (openat2_usable && strchr(path + 1, '/') != NULL) {
        struct open_how_v0 how = {O_PATH | O_DIRECTORY | O_CLOEXEC, 0, RESOLVE_NO_SYMLINKS_FLAG};
        long fd = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
        if (fd >= 0) {
            close((int)fd);
            return 1;
        }
        if (errno == ENOENT || errno == ENOTDIR) {
            return 1;  /* a link met before the walk stopped would have been ELOOP */
        }
        if (errno != ENOSYS && errno != EPERM && errno != EINVAL && errno != E2BIG) {
            return 0;  /* ELOOP: a link; EACCES ...: the policy decides */
        }
        openat2_usable = 0;  /* the launcher's filter below Landlock ABI 3: openat2 hides flags it must see */
    }
#endif
    return no_links_walk(dirfd, path, len);
}

/* The absolute path of p relative to the folder descriptor dirfd (>= 0), as the
 * policy's dirfd.resolve_at makes it: the kernel's own name for the folder
 * (/proc/self/fd/N, no link in it), "/", then p; NULL (the policy decides) for a
 * descriptor that names no folder path, a deleted one, or a result not in normal
 * form.  An absolute p, or AT_FDCWD, is absolute_bytes's. */
static const char *
absolute_at(int dirfd, const char *p, size_t len, char *joined, size_t *outlen)
{
    if (p[0] == '/' || dirfd == AT_FDCWD) {
        return absolute_bytes(p, len, joined, outlen);
    }
    char link[32];
    snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
    ssize_t n = readlink(link, joined, PATH_MAX - 1);
    static const char deleted[] = " (deleted)";
    size_t dl = sizeof deleted - 1;
    if (n <= 0 || joined[0] != '/' || ((size_t)n >= dl && memcmp(joined + n - dl, deleted, dl) == 0)) {
        return NULL;  /* a pipe, a socket, an unlinked folder, or no descriptor at all */
    }
    size_t folder = (n == 1) ? 0 : (size_t)n;  /* "/" joins as "" */
    if (folder + 1 + len >= PATH_MAX) {
        return NULL;
    }
    joined[folder] = '/';
    memcpy(joined + folder + 1, p, len + 1);
    *outlen = folder + 1 + len;
    return normal_form(joined, *outlen) ? joined : NULL;
}

/* Whether the absolute path a (file-system bytes) may be a folder that holds a
 * persistence path, as replaces_persistence asks of a rename, a removal or a mode
 * change: some text a persistence path starts with begins with a + "/" (a
 * protected folder, a file or the IPython folder's globs beneath it).  With
 * may_be_persistence's "no", a certain "no": a glob's match beneath a starts with
 * its text, which either a starts with or which starts with a + "/". */
static int
may_hold_persistence(const writes_t *w, const char *a, size_t len)
{
    char key[PATH_MAX + 1];
    if (w->nstarts < 0 || len + 1 >= sizeof key) {
        return 1;
    }
    memcpy(key, a, len);
    key[len] = '/';
    key[len + 1] = '\0';
    /* the texts that start with key follow one another from the first not below it */
    Py_ssize_t lo = starts_below(w, key, 0);
    return lo < w->nstarts && strncmp(w->starts[lo], key, len + 1) == 0;
}

/* Whether the str path, relative to the folder dirfd (AT_FDCWD: the working
 * folder; relative paths only when relative_ok), names an ordinary place: not a
 * persistence path (nor, with holders, a folder holding one), and with no symbolic
 * link in any component, so that the path the kernel resolves is the one judged. */
static int
ordinary_path(const writes_t *w, PyObject *path, int dirfd, int relative_ok, int holders)
{
    if (w->dirs == NULL || !PyUnicode_CheckExact(path)) {
        return 0;
    }
    /* an ASCII str is its own file-system bytes (UTF-8, kept in the object): no copy */
    PyObject *encoded = NULL;
    const char *p;
    Py_ssize_t size;
    if (PyUnicode_IS_ASCII(path)) {
        p = PyUnicode_AsUTF8AndSize(path, &size);
    }
    else {
        encoded = PyUnicode_EncodeFSDefault(path);
        p = encoded != NULL ? PyBytes_AS_STRING(encoded) : NULL;
        size = encoded != NULL ? PyBytes_GET_SIZE(encoded) : 0;
    }
    if (p == NULL) {
        PyErr_Clear();
        return 0;
    }
    size_t len = (size_t)size, alen = 0;
    int ordinary = 0;
    char joined[PATH_MAX];
    const char *a = NULL;
    if (len > 0 && len < PATH_MAX && strlen(p) == len && (p[0] == '/' || relative_ok)) {
        a = absolute_at(dirfd, p, len, joined, &alen);
    }
    if (a != NULL) {
        int persistent = may_be_persistence(w, a, alen);
        if (persistent && !holders) {
            PyObject *absolute = a == p ? Py_NewRef(path) : PyUnicode_DecodeFSDefaultAndSize(a, (Py_ssize_t)alen);
            if (absolute == NULL) {
                PyErr_Clear();  /* persistent stays set: the policy decides */
            }
            else {
                persistent = persistence_name(w, absolute);
                Py_DECREF(absolute);
            }
        }
        persistent = persistent || (holders && may_hold_persistence(w, a, alen));
        ordinary = !persistent && no_links(dirfd, p, len);
    }
    Py_XDECREF(encoded);
    return ordinary;
}

/* Whether an open event writes an ordinary file: not a persistence path, however
 * the kernel resolves it, and not named like a process's environ or mem. */
static int
ordinary_write(const filter_t *f, PyObject *args)
{
    PyObject *path = PyTuple_GET_ITEM(args, 0);
    int relative_ok = 0;
    return PyUnicode_CheckExact(path)
        && opens_for_writing(PyTuple_GET_ITEM(args, 1), PyTuple_GET_ITEM(args, 2), &relative_ok)
        && !may_be_credential(path)
        && ordinary_path(&f->writes, path, AT_FDCWD, relative_ok, 0);
}

/* Whether a change event (a removal, a rename, a mode change ...) touches only
 * ordinary places: every end the policy judges (f->ends for event index i: the
 * argument index of its path, and of its dir_fd or -1) is a str path that is no
 * persistence path and no folder holding one, with no link in it.  A dir_fd that
 * is not an int (None) or is negative means the working folder, as resolve_at
 * takes it. */
static int
ends_need_no_policy(const filter_t *f, int i, PyObject *args)
{
    if (args == NULL || !PyTuple_CheckExact(args)) {
        return 0;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    for (int e = 0; e < f->nends[i]; e++) {
        int at = f->ends[i][e][0], fd_at = f->ends[i][e][1];
        if (at >= n || fd_at >= n) {
            return 0;
        }
        int dirfd = AT_FDCWD;
        PyObject *fd = fd_at >= 0 ? PyTuple_GET_ITEM(args, fd_at) : Py_None;
        if (PyLong_CheckExact(fd)) {
            long v = PyLong_AsLong(fd);
            if (v == -1 && PyErr_Occurred()) {
                PyErr_Clear();
                return 0;
            }
            if (v > INT_MAX) {
                return 0;
            }
            dirfd = v >= 0 ? (int)v : AT_FDCWD;
        }
        else if (fd != Py_None) {
            return 0;  /* a bool or another type: the policy says what it means */
        }
        if (!ordinary_path(&f->writes, PyTuple_GET_ITEM(args, at), dirfd, 1, 1)) {
            return 0;
        }
    }
    return 1;
}

/* Whether the policy would let this open event pass and record nothing. */
static int
open_needs_no_policy(const filter_t *f, PyObject *args)
{
    if (args == NULL || !PyTuple_CheckExact(args) || PyTuple_GET_SIZE(args) != 3) {
        return 0;
    }
    if (plain_read(args)) {
        return !may_be_credential(PyTuple_GET_ITEM(args, 0));
    }
    return ordinary_write(f, args);
}

/* The bucket of a name or event: its first four bytes (fewer if shorter).  Every
 * audit event of the process is looked up, most of them uninteresting (a logging
 * record raises five): a linear scan compared them with twenty names starting "o". */
static inline unsigned
bucket_of(const char *s)
{
    unsigned h = 0;
    for (int k = 0; k < 4 && s[k] != '\0'; k++) {
        h = h * 31u + (unsigned char)s[k];
    }
    return h & (NAME_BUCKETS - 1);
}

/* The index of event among f's names, or -1. */
static inline int
find_name(const filter_t *f, const char *event)
{
    for (int i = f->bucket_head[bucket_of(event)]; i >= 0; i = f->bucket_next[i]) {
        if (strcmp(f->names[i], event) == 0) {
            return i;
        }
    }
    return -1;
}

static int
filter_hook(const char *event, PyObject *args, void *data)
{
    filter_t *f = (filter_t *)data;
    int i = find_name(f, event);
    if (i < 0) {
        if (event[0] == 'k' && strcmp(event, CHECK_EVENT) == 0) {
            f->seen_check = 1;
        }
        return 0;
    }
    if (f->quiet && !f->kept[i]) {
        /* the launcher's record-only filter, once the enforcing one records */
        return 0;
    }
    /* Runtime hooks run for every interpreter; the callback belongs to one.
     * Creating another interpreter is refused by the policy, so this is only
     * reached for one that existed before the guard. */
#if PY_VERSION_HEX >= 0x030D0000
    PyThreadState *tstate = PyThreadState_GetUnchecked();
#else
    PyThreadState *tstate = _PyThreadState_UncheckedGet();
#endif
    if (tstate == NULL || PyThreadState_GetInterpreter(tstate) != f->interp) {
        return 0;
    }
    if (strcmp(event, "open") == 0 && open_needs_no_policy(f, args)) {
        return 0;
    }
    if (f->nends[i] > 0 && ends_need_no_policy(f, i, args)) {
        return 0;
    }
    /* as CPython does for Python hooks: no tracer or profiler runs inside the
     * policy (a trace function could otherwise rewrite its local variables) */
    PyThreadState_EnterTracing(tstate);
    PyObject *result = PyObject_CallFunctionObjArgs(f->callback, f->interned[i],
                                                    args != NULL ? args : Py_None, NULL);
    PyThreadState_LeaveTracing(tstate);
    if (result == NULL) {
        return -1;  /* the exception aborts the audited operation */
    }
    Py_DECREF(result);
    return 0;
}

PyDoc_STRVAR(add_hook_doc,
"add_hook(names, callback, writes=None, record_only=None, ends=None, /)\n--\n\n"
"Add a runtime audit hook that calls ``callback(event, args)`` for the events in\n"
"``names`` (an iterable of str) and ignores all others, except an ``open`` event\n"
"that only reads a str path not named like a process's environ or mem, and, when\n"
"``writes`` is given, one that writes an ordinary file: ``writes`` is the policy's\n"
"(folders, compiled glob pattern, files) of persistence paths, and optionally a\n"
"tuple of str every persistence path starts with (its folders, files and each glob\n"
"up to its first wildcard), which spares most writes the whole comparison; a str\n"
"path whose absolute form none of them names and whose components hold no symbolic\n"
"link passes without a call.\n"
"``ends``: with ``writes`` and its starts, a dict of event name -> the (path index,\n"
"dir_fd index or -1) of each end a change event touches (a removal, a rename, a\n"
"mode change): the event passes without a call when every end is a str path that\n"
"is no persistence path, no folder holding one, and holds no symbolic link.\n"
"``record_only``: None for a filter whose callback enforces; adding one narrows\n"
"every record-only filter added before it (in this interpreter) to the names its\n"
"``record_only`` iterable keeps.\n"
"The hook cannot be removed.  Raises RuntimeError when an existing hook\n"
"prevented adding it.");

/* Fill f's event names from the iterable obj. */
static int
set_names(filter_t *f, PyObject *obj)
{
    PyObject *names = PySequence_Tuple(obj);
    if (names == NULL) {
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    memset(f->bucket_head, -1, sizeof f->bucket_head);
    if (n > MAX_NAMES) {
        Py_DECREF(names);
        PyErr_Format(PyExc_ValueError, "add_hook: at most %d event names", MAX_NAMES);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "add_hook: event names must be str");
            break;
        }
        Py_INCREF(name);
        PyUnicode_InternInPlace(&name);
        const char *utf8 = PyUnicode_AsUTF8(name);
        if (utf8 == NULL || utf8[0] == '\0') {
            Py_DECREF(name);
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_ValueError, "add_hook: empty event name");
            }
            break;
        }
        f->interned[i] = name;
        f->names[i] = utf8;
        f->count = i + 1;
        unsigned b = bucket_of(utf8);
        f->bucket_next[i] = f->bucket_head[b];
        f->bucket_head[b] = (signed char)i;
    }
    Py_DECREF(names);
    return PyErr_Occurred() ? -1 : 0;
}

static int
by_bytes(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

/* Keep the texts every persistence path starts with as file-system bytes, sorted,
 * leaving out any that another one starts (the search in may_be_persistence needs
 * that).  One block, never freed: the hook lives as long as the process. */
static int
set_starts(writes_t *w, PyObject *starts)
{
    w->nstarts = -1;
    if (starts == NULL) {
        return 0;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(starts);
    size_t bytes = (size_t)n * sizeof(char *);
    PyObject *encoded = PyTuple_New(n);
    if (encoded == NULL) {
        return -1;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *item = PyTuple_GET_ITEM(starts, k);
        PyObject *e = PyUnicode_CheckExact(item) ? PyUnicode_EncodeFSDefault(item) : NULL;
        if (e == NULL || (Py_ssize_t)strlen(PyBytes_AS_STRING(e)) != PyBytes_GET_SIZE(e)) {
            Py_XDECREF(e);
            Py_DECREF(encoded);
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "add_hook: persistence starts must be str without NUL");
            }
            return -1;
        }
        PyTuple_SET_ITEM(encoded, k, e);
        bytes += (size_t)PyBytes_GET_SIZE(e) + 1;
    }
    char **table = PyMem_RawMalloc(bytes ? bytes : 1);
    if (table == NULL) {
        Py_DECREF(encoded);
        PyErr_NoMemory();
        return -1;
    }
    char *text = (char *)(table + n);
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *e = PyTuple_GET_ITEM(encoded, k);
        memcpy(text, PyBytes_AS_STRING(e), (size_t)PyBytes_GET_SIZE(e) + 1);
        table[k] = text;
        text += PyBytes_GET_SIZE(e) + 1;
    }
    Py_DECREF(encoded);
    qsort(table, (size_t)n, sizeof(char *), by_bytes);
    /* sorted, a text another starts comes right after it or after texts it also starts */
    Py_ssize_t kept = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        if (kept == 0 || strncmp(table[kept - 1], table[k], strlen(table[kept - 1])) != 0) {
            table[kept++] = table[k];
        }
    }
    w->starts = table;
    w->nstarts = kept;
    return 0;
}

/* Keep the persistence data (folders, pattern, files, starts) the write check compares with. */
static int
set_writes(filter_t *f, PyObject *obj)
{
    f->writes.nstarts = -1;
    if (obj == Py_None) {
        return 0;
    }
    PyObject *dirs, *pattern, *files, *starts = NULL;
    if (!PyTuple_Check(obj) || !PyArg_ParseTuple(obj, "O!OO!|O!", &PyTuple_Type, &dirs, &pattern,
                                                  &PyFrozenSet_Type, &files, &PyTuple_Type, &starts)) {
        PyErr_SetString(PyExc_TypeError,
                        "add_hook: writes must be (tuple of folders, pattern, frozenset[, tuple of starts])");
        return -1;
    }
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(dirs); k++) {
        if (!PyUnicode_CheckExact(PyTuple_GET_ITEM(dirs, k))) {
            PyErr_SetString(PyExc_TypeError, "add_hook: persistence folders must be str");
            return -1;
        }
    }
    PyObject *match = PyObject_GetAttrString(pattern, "match");
    if (match == NULL) {
        return -1;
    }
    if (set_starts(&f->writes, starts) < 0) {
        Py_DECREF(match);
        return -1;
    }
    if (pth_suffix == NULL) {
        pth_suffix = PyUnicode_InternFromString(".pth");
        site_prefix = PyUnicode_InternFromString("sitecustomize.");
        user_prefix = PyUnicode_InternFromString("usercustomize.");
        if (pth_suffix == NULL || site_prefix == NULL || user_prefix == NULL) {
            Py_DECREF(match);
            return -1;
        }
    }
    f->writes.dirs = Py_NewRef(dirs);
    f->writes.match = match;
    f->writes.files = Py_NewRef(files);
    return 0;
}

/* A record-only filter keeps these names once an enforcing filter follows it. */
static int
set_record_only(filter_t *f, PyObject *obj)
{
    if (obj == Py_None) {
        return 0;
    }
    PyObject *kept = PySequence_Tuple(obj);
    if (kept == NULL) {
        return -1;
    }
    f->record_only = 1;
    for (Py_ssize_t i = 0; i < f->count; i++) {
        int r = PySequence_Contains(kept, f->interned[i]);
        if (r < 0) {
            Py_DECREF(kept);
            return -1;
        }
        f->kept[i] = (char)(r != 0);
    }
    Py_DECREF(kept);
    return 0;
}

/* Keep, for each of f's names that obj (a dict, or None) maps to a tuple of one or two
 * (path index, dir_fd index or -1) pairs, the ends its events are settled by here.
 * Only with the persistence starts: the folder test searches them. */
static int
set_ends(filter_t *f, PyObject *obj)
{
    if (obj == Py_None) {
        return 0;
    }
    if (!PyDict_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "add_hook: ends must be a dict of event name -> ((path, dir_fd), ...)");
        return -1;
    }
    if (f->writes.nstarts < 0) {
        PyErr_SetString(PyExc_ValueError, "add_hook: ends need writes with what every persistence path starts with");
        return -1;
    }
    for (Py_ssize_t i = 0; i < f->count; i++) {
        PyObject *pairs = PyDict_GetItemWithError(obj, f->interned[i]);
        if (pairs == NULL) {
            if (PyErr_Occurred()) {
                return -1;
            }
            continue;
        }
        Py_ssize_t n = PyTuple_Check(pairs) ? PyTuple_GET_SIZE(pairs) : 0;
        if (n < 1 || n > 2) {
            PyErr_Format(PyExc_ValueError, "add_hook: ends[%R] must be one or two (path, dir_fd) pairs", f->interned[i]);
            return -1;
        }
        for (Py_ssize_t e = 0; e < n; e++) {
            int at, fd_at;
            PyObject *pair = PyTuple_GET_ITEM(pairs, e);
            if (!PyTuple_Check(pair) || !PyArg_ParseTuple(pair, "ii", &at, &fd_at)
                    || at < 0 || at > 15 || fd_at < -1 || fd_at > 15) {
                PyErr_Clear();
                PyErr_Format(PyExc_ValueError, "add_hook: ends[%R] pairs must be (path index 0 to 15, "
                             "dir_fd index -1 for none or 0 to 15)", f->interned[i]);
                return -1;
            }
            f->ends[i][e][0] = (signed char)at;
            f->ends[i][e][1] = (signed char)fd_at;
        }
        f->nends[i] = (unsigned char)n;
    }
    return 0;
}

/* An enforcing filter records every event from now on: the record-only filters
 * added before it in this interpreter pass only the names they keep. */
static void
register_filter(filter_t *f)
{
    for (int k = 0; !f->record_only && k < filter_count; k++) {
        if (filters[k]->record_only && filters[k]->interp == f->interp) {
            filters[k]->quiet = 1;
        }
    }
    if (filter_count < MAX_FILTERS) {
        filters[filter_count++] = f;
    }
}

static PyObject *
add_hook(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs < 2 || nargs > 5) {
        PyErr_SetString(PyExc_TypeError, "add_hook(names, callback, writes=None, record_only=None, ends=None)");
        return NULL;
    }
    if (!PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "add_hook: callback must be callable");
        return NULL;
    }
    /* never freed: the hook lives as long as the process */
    filter_t *f = PyMem_RawCalloc(1, sizeof(filter_t));
    if (f == NULL) {
        return PyErr_NoMemory();
    }
    if (set_names(f, args[0]) < 0 || set_writes(f, nargs > 2 ? args[2] : Py_None) < 0
            || set_record_only(f, nargs > 3 ? args[3] : Py_None) < 0
            || set_ends(f, nargs > 4 ? args[4] : Py_None) < 0) {
        goto fail;
    }
    f->callback = Py_NewRef(args[1]);
    f->interp = PyInterpreterState_Get();
    if (PySys_AddAuditHook(filter_hook, f) < 0) {
        return NULL;  /* the entry may be in the runtime's list: keep its data alive */
    }
    /* PySys_AddAuditHook reports success when an existing hook vetoed the
     * addition with a RuntimeError: check that the hook really runs. */
    if (PySys_Audit(CHECK_EVENT, NULL) < 0) {
        return NULL;
    }
    if (!f->seen_check) {
        PyErr_SetString(PyExc_RuntimeError,
                        "add_hook: the audit hook was not added (another audit hook refused it)");
        return NULL;
    }
    register_filter(f);
    Py_RETURN_NONE;

fail:
    for (Py_ssize_t i = 0; i < f->count; i++) {
        Py_DECREF(f->interned[i]);
    }
    Py_XDECREF(f->writes.dirs);
    Py_XDECREF(f->writes.match);
    Py_XDECREF(f->writes.files);
    PyMem_RawFree(f->writes.starts);
    PyMem_RawFree(f);
    return NULL;
}

PyDoc_STRVAR(resolve_doc,
"resolve(path, /)\n--\n\n"
"The canonical form of the absolute str ``path`` with every symbolic link\n"
"resolved by realpath(3), for a file that exists or is about to be created\n"
"in an existing directory; None when only os.path.realpath can answer\n"
"(a missing directory, a dangling link, a name too long).  The audit layer\n"
"calls this for every file opened for writing: the C library resolves a\n"
"path several times faster than os.path.realpath.");

/* The file-system bytes of the str path arg, given to the module function who;
 * NULL with TypeError (or the codec's error) otherwise. */
static PyObject *
path_bytes(PyObject *arg, const char *who)
{
    if (!PyUnicode_CheckExact(arg)) {
        PyErr_Format(PyExc_TypeError, "%s: path must be str", who);
        return NULL;
    }
    return PyUnicode_EncodeFSDefault(arg);
}

static PyObject *
resolve(PyObject *module, PyObject *arg)
{
    (void)module;
    PyObject *encoded = path_bytes(arg, "resolve");
    if (encoded == NULL) {
        return NULL;
    }
    const char *path = PyBytes_AS_STRING(encoded);
    char out[PATH_MAX];
    PyObject *result = NULL;
    if (path[0] != '/' || strlen(path) >= PATH_MAX
            || (Py_ssize_t)strlen(path) != PyBytes_GET_SIZE(encoded)) {
        goto fallback;  /* relative, too long, or with a NUL byte */
    }
    /* one lstat tells whether the last component needs resolving at all: a
     * plain file, or one about to be created, keeps its name, and only its
     * directory is resolved */
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (S_ISLNK(st.st_mode) || S_ISDIR(st.st_mode)) {
            if (realpath(path, out) == NULL) {
                goto fallback;  /* a dangling link: creating it creates its target */
            }
            result = PyUnicode_DecodeFSDefault(out);
            goto done;
        }
    }
    else if (errno != ENOENT) {
        goto fallback;
    }
    /* a file, or one not there yet: resolve its directory, keep its name */
    const char *slash = strrchr(path, '/');
    const char *name = slash + 1;
    if (name[0] == '\0' || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) {
        goto fallback;
    }
    char dir[PATH_MAX];
    size_t dirlen = (size_t)(slash - path);
    memcpy(dir, path, dirlen);
    dir[dirlen == 0 ? 1 : dirlen] = '\0';
    if (dirlen == 0) {
        dir[0] = '/';
    }
    if (realpath(dir, out) == NULL) {
        goto fallback;
    }
    size_t outlen = strlen(out);
    if (outlen + 1 + strlen(name) >= PATH_MAX) {
        goto fallback;
    }
    if (!(outlen == 1 && out[0] == '/')) {
        out[outlen++] = '/';
    }
    strcpy(out + outlen, name);
    result = PyUnicode_DecodeFSDefault(out);
    goto done;
fallback:
    result = Py_NewRef(Py_None);
done:
    Py_DECREF(encoded);
    return result;
}

PyDoc_STRVAR(no_links_doc,
"no_links(path) -> bool\n\n"
"The filter's link test, as it runs for a write-open or a removal: whether the\n"
"kernel's walk of path (absolute, or relative to the working folder) meets no\n"
"symbolic link, the last component's included.  One openat2 where the system\n"
"call is allowed, else an lstat of each component.  For tests, and for the\n"
"benchmarks' row of what the test alone costs.");

static PyObject *
no_links_of(PyObject *module, PyObject *arg)
{
    (void)module;
    PyObject *encoded = path_bytes(arg, "no_links");
    if (encoded == NULL) {
        return NULL;
    }
    const char *path = PyBytes_AS_STRING(encoded);
    size_t len = (size_t)PyBytes_GET_SIZE(encoded);
    if (len == 0 || len >= PATH_MAX || strlen(path) != len) {
        Py_DECREF(encoded);
        PyErr_SetString(PyExc_ValueError, "no_links: path must be a non-empty path without NUL, shorter than PATH_MAX");
        return NULL;
    }
    int plain = no_links(AT_FDCWD, path, len);
    Py_DECREF(encoded);
    return PyBool_FromLong(plain);
}

static PyMethodDef methods[] = {
    {"add_hook", (PyCFunction)(void (*)(void))add_hook, METH_FASTCALL, add_hook_doc},
    {"resolve", resolve, METH_O, resolve_doc},
    {"no_links", no_links_of, METH_O, no_links_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kernel_guard.audit._filter",
    .m_doc = "The audit layer's event filter: a runtime audit hook that calls Python only for interesting events.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__filter(void)
{
    return PyModule_Create(&module);
}
