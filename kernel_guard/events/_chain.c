/* kernel_guard.events._chain: link a run of one stream's events, off the GIL.
 *
 * Why this exists: the writer thread shares the interpreter's lock with the
 * cell.  Per event it serialises once (orjson, canonical: sorted keys), hashes
 * those bytes and splices the hash into the chain object (streams.py).  The
 * scan for the chain object, the hash and the splice need no Python object:
 * this module does them for a whole run of events with the lock released (only
 * the lines' bytes objects are made holding it), so the other core runs the
 * cell meanwhile.
 *
 * link(bodies, prev, placeholder) -> (lines, digests)
 *     bodies       canonical bodies (bytes) of consecutive events of one stream,
 *                  each serialised with chain == {"prev": placeholder}
 *     prev         the hash (64 hex digits) of the event before the first
 *     placeholder  the 64 characters each body holds in place of its prev
 *     Each body's placeholder becomes the hash of the body before it; the
 *     body, so completed, is hashed (SHA-256, OpenSSL's) and the hash is
 *     spliced in after "prev": the line, with its newline.  Returns the lines
 *     and hashes of the bodies it could link, in order: it stops at the first
 *     body whose chain object is not there exactly once, or that holds a
 *     character some readers take for a line end (U+2028, U+2029, U+0085).
 *     The caller links that one the Python way (streams.py), which escapes
 *     them, and goes on from there.  Every line is byte for byte what
 *     streams._hashed_line writes for the same event.
 *
 * link_run(events, bodies, start, prev, placeholder) -> (lines, digests)
 *     link() over the run of one stream's prepared events that begins at
 *     `start` (it ends before the first event of another stream, or whose
 *     body is None), and write each linked event's prev and hash into its
 *     chain object, as its line holds them.  Nothing linked (an odd event at
 *     `start`): ([], []), and the caller takes that event the Python way.
 *     The per-event bookkeeping of a batch, in Python, cost as much as the
 *     hashing (0.3-0.5 us an event, measured).
 *
 * Preparer(dumps, option, default, placeholder, fallback).prepare(event)
 *     StreamChain.prepare natively: for an event (a dict, its kernel_guard a
 *     dict) with a stream, puts chain = {"prev": placeholder} in and returns
 *     dumps(event, option=option, default=default), or None (no stream, or
 *     dumps raised TypeError: what orjson refuses).  Any other event goes to
 *     fallback(event).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#include <openssl/evp.h>

#define HEX 64
static const char MARK_HEAD[] = "\"chain\":{\"prev\":\"";
#define MARK_HEAD_LEN (sizeof(MARK_HEAD) - 1)
/* the chain object as each body holds it: "chain":{"prev":"<placeholder>"} */
#define MARK_LEN ((Py_ssize_t)MARK_HEAD_LEN + HEX + 2)
static const char HASH_HEAD[] = ",\"hash\":\"";
#define HASH_HEAD_LEN (sizeof(HASH_HEAD) - 1)
/* the line's length over its body's: ,"hash":" + 64 + " + newline */
#define GROWTH (HASH_HEAD_LEN + HEX + 2)

typedef struct {
    const char *body;
    Py_ssize_t len;
    char *out;          /* the line's buffer (a bytes object's, not yet shared) */
} job_t;

static EVP_MD *sha256;  /* fetched once: an implicit fetch per digest costs more than the digest */

/* Offset of the only occurrence of `mark` in `body`, or -1 (none, or more than one). */
static Py_ssize_t
only_occurrence(const char *body, Py_ssize_t len, const char *mark, Py_ssize_t mark_len)
{
    const char *first = memmem(body, (size_t)len, mark, (size_t)mark_len);
    if (first == NULL)
        return -1;
    const char *after = first + mark_len;  /* an occurrence cannot overlap: it starts with a quote */
    if (memmem(after, (size_t)(body + len - after), mark, (size_t)mark_len) != NULL)
        return -1;
    return first - body;
}

/* Whether `body` holds U+2028, U+2029 (E2 80 A8/A9) or U+0085 (C2 85) as UTF-8.
 * memchr's vector scan for the lead bytes: most bodies are ASCII and hold neither. */
static int
has_line_break(const char *body, Py_ssize_t len)
{
    const unsigned char *start = (const unsigned char *)body, *end = start + len, *p;
    for (p = start; (p = memchr(p, 0xC2, (size_t)(end - p))) != NULL && p + 1 < end; p++) {
        if (p[1] == 0x85)
            return 1;
    }
    for (p = start; (p = memchr(p, 0xE2, (size_t)(end - p))) != NULL && p + 2 < end; p++) {
        if (p[1] == 0x80 && (p[2] == 0xA8 || p[2] == 0xA9))
            return 1;
    }
    return 0;
}

static const char HEX_DIGITS[] = "0123456789abcdef";

/* Link the jobs in turn, the lock not held: up to the first whose body cannot be
 * linked (its chain object not there exactly once, or a line break to escape).
 * The count linked, or -1 when OpenSSL failed. */
static Py_ssize_t
link_all(job_t *jobs, Py_ssize_t n, char (*digests)[HEX], const char *prev, const char *mark)
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        return -1;
    unsigned char md[32];
    unsigned int md_len = 0;
    Py_ssize_t i;
    for (i = 0; i < n; i++) {
        job_t *job = &jobs[i];
        Py_ssize_t at = only_occurrence(job->body, job->len, mark, MARK_LEN);
        if (at < 0 || has_line_break(job->body, job->len))
            break;
        at += (Py_ssize_t)MARK_HEAD_LEN;      /* the placeholder */
        Py_ssize_t cut = at + HEX + 1;        /* after prev's closing quote, before the brace */
        Py_ssize_t rest = job->len - cut;
        memcpy(job->out, job->body, (size_t)at);
        memcpy(job->out + at, i ? digests[i - 1] : prev, HEX);
        job->out[at + HEX] = '"';
        /* the body as hashed: its prev in place, no hash yet */
        if (!EVP_DigestInit_ex2(ctx, sha256, NULL) || !EVP_DigestUpdate(ctx, job->out, (size_t)cut)
                || !EVP_DigestUpdate(ctx, job->body + cut, (size_t)rest)
                || !EVP_DigestFinal_ex(ctx, md, &md_len) || md_len != 32) {
            EVP_MD_CTX_free(ctx);
            return -1;
        }
        for (int b = 0; b < 32; b++) {
            digests[i][2 * b] = HEX_DIGITS[md[b] >> 4];
            digests[i][2 * b + 1] = HEX_DIGITS[md[b] & 15];
        }
        char *p = job->out + cut;
        memcpy(p, HASH_HEAD, HASH_HEAD_LEN);
        memcpy(p + HASH_HEAD_LEN, digests[i], HEX);
        p[HASH_HEAD_LEN + HEX] = '"';
        memcpy(p + GROWTH - 1, job->body + cut, (size_t)rest);
        job->out[job->len + GROWTH - 1] = '\n';
    }
    EVP_MD_CTX_free(ctx);
    return i;
}

/* A line's buffer for each body (bytes objects, appended to `lines`), while the lock
 * is held.  0, or -1 with an error set. */
static int
allocate(PyObject *bodies, job_t *jobs, PyObject *lines)
{
    Py_ssize_t n = PyTuple_GET_SIZE(bodies);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(bodies, i);
        if (!PyBytes_Check(item)) {
            PyErr_Format(PyExc_TypeError, "link: body %zd is %.100s, not bytes", i, Py_TYPE(item)->tp_name);
            return -1;
        }
        Py_ssize_t len = PyBytes_GET_SIZE(item);
        PyObject *line = PyBytes_FromStringAndSize(NULL, len + GROWTH);
        if (line == NULL)
            return -1;
        if (PyList_Append(lines, line) < 0) {
            Py_DECREF(line);
            return -1;
        }
        Py_DECREF(line);  /* the list holds it */
        jobs[i] = (job_t){PyBytes_AS_STRING(item), len, PyBytes_AS_STRING(line)};
    }
    return 0;
}

static PyObject *
digests_list(char (*digests)[HEX], Py_ssize_t n)
{
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *digest = PyUnicode_DecodeASCII(digests[i], HEX, NULL);
        if (digest == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, digest);
    }
    return out;
}

/* Link `bodies` (a tuple of bytes) after `prev`: (lines, digests) of those linked, or NULL. */
static PyObject *
link_bodies(PyObject *bodies, const char *prev, const char *placeholder)
{
    Py_ssize_t n = PyTuple_GET_SIZE(bodies);
    job_t *jobs = PyMem_Malloc(sizeof(job_t) * (size_t)(n ? n : 1));
    char (*digests)[HEX] = PyMem_Malloc((size_t)HEX * (size_t)(n ? n : 1));
    PyObject *lines = PyList_New(0), *result = NULL;
    if (jobs == NULL || digests == NULL || lines == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (allocate(bodies, jobs, lines) < 0)
        goto done;
    char mark[MARK_LEN], prev_copy[HEX];
    memcpy(mark, MARK_HEAD, MARK_HEAD_LEN);
    memcpy(mark + MARK_HEAD_LEN, placeholder, HEX);
    memcpy(mark + MARK_HEAD_LEN + HEX, "\"}", 2);
    memcpy(prev_copy, prev, HEX);
    Py_ssize_t count;
    Py_BEGIN_ALLOW_THREADS
    count = link_all(jobs, n, digests, prev_copy, mark);
    Py_END_ALLOW_THREADS
    if (count < 0) {
        PyErr_SetString(PyExc_RuntimeError, "link: OpenSSL's SHA-256 failed");
        goto done;
    }
    if (PyList_SetSlice(lines, count, n, NULL) < 0)  /* the buffers of the bodies not linked */
        goto done;
    PyObject *hashes = digests_list(digests, count);
    if (hashes != NULL)
        result = PyTuple_Pack(2, lines, hashes);
    Py_XDECREF(hashes);
done:
    PyMem_Free(jobs);
    PyMem_Free(digests);
    Py_XDECREF(lines);
    return result;
}

static PyObject *
chain_link(PyObject *module, PyObject *args)
{
    PyObject *bodies_arg;
    const char *prev, *placeholder;
    Py_ssize_t prev_len, placeholder_len;
    if (!PyArg_ParseTuple(args, "Os#s#:link", &bodies_arg, &prev, &prev_len, &placeholder, &placeholder_len))
        return NULL;
    if (prev_len != HEX || placeholder_len != HEX)
        return PyErr_Format(PyExc_ValueError, "link: prev and placeholder are %d characters", HEX);
    /* a tuple: nobody can drop a body from it while they are read without the lock */
    PyObject *bodies = PySequence_Tuple(bodies_arg);
    if (bodies == NULL)
        return NULL;
    PyObject *result = link_bodies(bodies, prev, placeholder);
    Py_DECREF(bodies);
    return result;
}

static PyObject *S_kernel_guard, *S_stream, *S_chain, *S_prev, *S_hash, *S_option, *S_default;

/* event["kernel_guard"] when the event and it are plain dicts (borrowed), else NULL. */
static PyObject *
guard_of(PyObject *event)
{
    if (!PyDict_CheckExact(event))
        return NULL;
    PyObject *guard = PyDict_GetItemWithError(event, S_kernel_guard);
    return guard != NULL && PyDict_CheckExact(guard) ? guard : NULL;
}

/* The chain object of a prepared event (borrowed), or NULL when it has none. */
static PyObject *
chain_of(PyObject *event)
{
    PyObject *guard = guard_of(event);
    PyObject *chain = guard ? PyDict_GetItemWithError(guard, S_chain) : NULL;
    return chain != NULL && PyDict_CheckExact(chain) ? chain : NULL;
}

/* Where the run of `stream` that begins at `start` ends: the first event of another
 * stream, without a body, or without a chain object; -1 with an error set. */
static Py_ssize_t
run_end(PyObject *events, PyObject *bodies, Py_ssize_t start, Py_ssize_t n, PyObject *stream)
{
    Py_ssize_t j = start;
    for (; j < n; j++) {
        PyObject *event = PyList_GET_ITEM(events, j), *guard = guard_of(event);
        if (!PyBytes_CheckExact(PyList_GET_ITEM(bodies, j)) || guard == NULL || chain_of(event) == NULL)
            break;
        PyObject *other = PyDict_GetItemWithError(guard, S_stream);
        if (other == NULL)
            break;
        int same = other == stream ? 1 : PyObject_RichCompareBool(other, stream, Py_EQ);
        if (same < 0)
            return -1;
        if (!same)
            break;
    }
    return PyErr_Occurred() ? -1 : j;
}

/* Write each linked event's prev and hash into its chain object (`chains`, held). */
static int
write_back(PyObject *chains, PyObject *prev, PyObject *digests)
{
    Py_ssize_t count = PyList_GET_SIZE(digests);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *chain = PyTuple_GET_ITEM(chains, i), *digest = PyList_GET_ITEM(digests, i);
        if (PyDict_SetItem(chain, S_prev, i ? PyList_GET_ITEM(digests, i - 1) : prev) < 0
                || PyDict_SetItem(chain, S_hash, digest) < 0)
            return -1;
    }
    return 0;
}

static PyObject *
chain_link_run(PyObject *module, PyObject *args)
{
    PyObject *events, *bodies, *prev;
    const char *placeholder;
    Py_ssize_t start, placeholder_len;
    if (!PyArg_ParseTuple(args, "O!O!nUs#:link_run", &PyList_Type, &events, &PyList_Type, &bodies, &start, &prev,
                          &placeholder, &placeholder_len))
        return NULL;
    if (PyUnicode_GET_LENGTH(prev) != HEX || !PyUnicode_IS_ASCII(prev) || placeholder_len != HEX)
        return PyErr_Format(PyExc_ValueError, "link_run: prev and placeholder are %d ASCII characters", HEX);
    Py_ssize_t n = Py_MIN(PyList_GET_SIZE(events), PyList_GET_SIZE(bodies));
    if (start < 0 || start >= n)
        return PyErr_Format(PyExc_IndexError, "link_run: start %zd is not an event's index", start);
    PyObject *guard = guard_of(PyList_GET_ITEM(events, start));
    PyObject *stream = guard ? PyDict_GetItemWithError(guard, S_stream) : NULL;
    if (PyErr_Occurred())
        return NULL;
    Py_XINCREF(stream);  /* held: a comparison may run code that changes the event */
    Py_ssize_t end = stream ? run_end(events, bodies, start, n, stream) : start;
    Py_XDECREF(stream);
    if (end < 0)
        return NULL;
    /* tuples of their own: what the lists hold may change while the lock is released */
    PyObject *run = PyList_GetSlice(bodies, start, end), *chains = PyTuple_New(end - start);
    PyObject *bodies_run = NULL, *linked = NULL, *result = NULL;
    if (run == NULL || chains == NULL)
        goto done;
    for (Py_ssize_t i = start; i < end; i++) {
        /* what run_end found, unless a collection just now ran code that changed it */
        PyObject *chain = chain_of(PyList_GET_ITEM(events, i));
        if (chain == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, "link_run: an event changed while its run was read");
            goto done;
        }
        PyTuple_SET_ITEM(chains, i - start, Py_NewRef(chain));
    }
    if ((bodies_run = PyList_AsTuple(run)) == NULL)
        goto done;
    linked = link_bodies(bodies_run, PyUnicode_DATA(prev), placeholder);
    if (linked != NULL && write_back(chains, prev, PyTuple_GET_ITEM(linked, 1)) == 0)
        result = Py_NewRef(linked);
done:
    Py_XDECREF(run);
    Py_XDECREF(bodies_run);
    Py_XDECREF(chains);
    Py_XDECREF(linked);
    return result;
}

/* -- Preparer ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *dumps;
    PyObject *kwvalues[2];  /* option, default */
    PyObject *kwnames;      /* ("option", "default") */
    PyObject *placeholder;
    PyObject *fallback;
} PreparerObject;

static PyObject *
Preparer_prepare(PreparerObject *self, PyObject *event)
{
    PyObject *guard = guard_of(event);
    if (guard == NULL) {
        if (PyErr_Occurred())
            return NULL;
        return PyObject_CallOneArg(self->fallback, event);
    }
    PyObject *stream = PyDict_GetItemWithError(guard, S_stream);
    if (stream == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    int streamed = PyObject_IsTrue(stream);
    if (streamed <= 0)
        return streamed < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *chain = PyDict_New();
    if (chain == NULL || PyDict_SetItem(chain, S_prev, self->placeholder) < 0
            || PyDict_SetItem(guard, S_chain, chain) < 0) {
        Py_XDECREF(chain);
        return NULL;
    }
    Py_DECREF(chain);
    PyObject *call[3] = {event, self->kwvalues[0], self->kwvalues[1]};
    PyObject *body = PyObject_Vectorcall(self->dumps, call, 1, self->kwnames);
    if (body == NULL && PyErr_ExceptionMatches(PyExc_TypeError)) {  /* what orjson refuses */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return body;
}

static int
Preparer_init(PreparerObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *dumps, *option, *dflt, *placeholder, *fallback;
    static char *names[] = {"dumps", "option", "default", "placeholder", "fallback", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOOUO:Preparer", names, &dumps, &option, &dflt, &placeholder,
                                     &fallback))
        return -1;
    if (!PyCallable_Check(dumps) || !PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "Preparer: dumps and fallback are callables");
        return -1;
    }
    PyObject *kwnames = PyTuple_Pack(2, S_option, S_default);
    if (kwnames == NULL)
        return -1;
    Py_XSETREF(self->kwnames, kwnames);
    Py_XSETREF(self->dumps, Py_NewRef(dumps));
    Py_XSETREF(self->kwvalues[0], Py_NewRef(option));
    Py_XSETREF(self->kwvalues[1], Py_NewRef(dflt));
    Py_XSETREF(self->placeholder, Py_NewRef(placeholder));
    Py_XSETREF(self->fallback, Py_NewRef(fallback));
    return 0;
}

static void
Preparer_dealloc(PreparerObject *self)
{
    Py_XDECREF(self->dumps);
    Py_XDECREF(self->kwvalues[0]);
    Py_XDECREF(self->kwvalues[1]);
    Py_XDECREF(self->kwnames);
    Py_XDECREF(self->placeholder);
    Py_XDECREF(self->fallback);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Preparer_methods[] = {
    {"prepare", (PyCFunction)Preparer_prepare, METH_O,
     "prepare(event) -> its canonical body with the placeholder as its prev, or None (StreamChain.prepare)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PreparerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kernel_guard.events._chain.Preparer",
    .tp_basicsize = sizeof(PreparerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Preparer(dumps, option, default, placeholder, fallback): StreamChain.prepare, natively",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Preparer_init,
    .tp_dealloc = (destructor)Preparer_dealloc,
    .tp_methods = Preparer_methods,
};

static PyMethodDef chain_methods[] = {
    {"link", chain_link, METH_VARARGS,
     "link(bodies, prev, placeholder) -> (lines, hashes): chain a run of one stream's canonical bodies."},
    {"link_run", chain_link_run, METH_VARARGS,
     "link_run(events, bodies, start, prev, placeholder) -> (lines, hashes): link the run at start, "
     "and write each event's prev and hash into its chain object."},
    {NULL, NULL, 0, NULL},
};

static int
chain_exec(PyObject *module)
{
    if (sha256 == NULL && (sha256 = EVP_MD_fetch(NULL, "SHA256", NULL)) == NULL) {
        PyErr_SetString(PyExc_ImportError, "OpenSSL has no SHA-256");
        return -1;
    }
    struct { PyObject **slot; const char *text; } names[] = {
        {&S_kernel_guard, "kernel_guard"}, {&S_stream, "stream"}, {&S_chain, "chain"}, {&S_prev, "prev"},
        {&S_hash, "hash"}, {&S_option, "option"}, {&S_default, "default"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (*names[i].slot == NULL && (*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL)
            return -1;
    if (PyType_Ready(&PreparerType) < 0)
        return -1;
    Py_INCREF(&PreparerType);
    if (PyModule_AddObject(module, "Preparer", (PyObject *)&PreparerType) < 0) {
        Py_DECREF(&PreparerType);
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot chain_slots[] = {
    {Py_mod_exec, chain_exec},
    {0, NULL},
};

static struct PyModuleDef chain_module = {
    PyModuleDef_HEAD_INIT, "kernel_guard.events._chain",
    "Link a run of one stream's events (SHA-256 and the splice) with the interpreter's lock released.",
    0, chain_methods, chain_slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__chain(void)
{
    return PyModuleDef_Init(&chain_module);
}
