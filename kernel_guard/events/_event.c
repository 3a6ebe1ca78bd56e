/* kernel_guard.events._event: make_event, its timestamp and its id, in C.
 *
 * Why this exists: every event the guard records is built by schema.make_event,
 * on the thread of the cell that caused it.  In Python that is 1.5 us warm and
 * 3-4 us for the cold events of a burst (measured): a quarter of the whole
 * pipeline's time.  Here the same dicts are built with the same keys in the same
 * order, the timestamp is formatted without a float, and the ids come from a
 * block of random bytes read 256 ids at a time.
 *
 * EventMaker(categories, info, ecs, fallback)
 *     categories  schema._CATEGORIES: action -> (event.category, event.type)
 *     info        their value for an action not in it
 *     ecs         the object every event holds as "ecs"
 *     fallback    schema's Python make_event: called, with the same arguments,
 *                 for any call this code does not take (no action or more than
 *                 one positional argument, no outcome or layer, random bytes not
 *                 to be had), so its errors are the errors
 * EventMaker(...).make(action, *, outcome, layer, reason=None, process=None,
 *                      file=None, kind="event", **guard_fields)
 *     -> the event schema.make_event builds; tests/events/test_event_native.py
 *     holds the two to each other.
 * timestamp() -> "YYYY-MM-DDTHH:MM:SS.ffffffZ", UTC (schema.timestamp)
 * new_id() -> a random (version 4, RFC 4122 variant) UUID as text
 *     A forked child never hands out its parent's ids: it reads a block of its own.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* -- ids ------------------------------------------------------------------------- */

#define IDS_PER_BLOCK 256
#define ID_LEN 36

/* The block of random bytes ids are cut from.  Only touched holding the interpreter's
 * lock; a forked child's generation is new, so it reads a block of its own. */
static unsigned char id_bytes[16 * IDS_PER_BLOCK];
static int ids_left;
static unsigned long block_generation, fork_generation;

static void
after_fork_in_child(void)
{
    fork_generation++;
}

/* Fill the block; 0, or -1 (errno set) when the kernel gives no random bytes. */
static int
refill(void)
{
    size_t got = 0;
    while (got < sizeof(id_bytes)) {  /* more than 256 bytes: a signal may cut a read short */
        ssize_t n = getrandom(id_bytes + got, sizeof(id_bytes) - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        got += (size_t)n;
    }
    ids_left = IDS_PER_BLOCK;
    block_generation = fork_generation;
    return 0;
}

static const char HEX_DIGITS[] = "0123456789abcdef";

/* The next id as text, or NULL with an error set. */
static PyObject *
next_id(void)
{
    if (ids_left == 0 || block_generation != fork_generation) {
        if (refill() < 0)
            return PyErr_SetFromErrno(PyExc_OSError);
    }
    unsigned char *b = id_bytes + 16 * --ids_left;
    b[6] = (unsigned char)((b[6] & 0x0F) | 0x40);  /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3F) | 0x80);  /* the RFC 4122 variant */
    PyObject *text = PyUnicode_New(ID_LEN, 127);
    if (text == NULL)
        return NULL;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(text);
    for (int i = 0, o = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = (Py_UCS1)HEX_DIGITS[b[i] >> 4];
        out[o++] = (Py_UCS1)HEX_DIGITS[b[i] & 15];
    }
    memset(b, 0, 16);  /* an id handed out is not kept */
    return text;
}

/* -- timestamps ------------------------------------------------------------------ */

#define TS_LEN 27  /* YYYY-MM-DDTHH:MM:SS.ffffffZ */
static time_t cached_second = -1;
static char cached_prefix[20];  /* the second's "YYYY-MM-DDTHH:MM:SS": formatted once */

static PyObject *
make_timestamp(void)
{
    struct timespec now;
    if (clock_gettime(CLOCK_REALTIME, &now) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    if (now.tv_sec != cached_second) {
        struct tm tm;
        if (gmtime_r(&now.tv_sec, &tm) == NULL
                || strftime(cached_prefix, sizeof(cached_prefix), "%Y-%m-%dT%H:%M:%S", &tm) != 19) {
            PyErr_SetString(PyExc_OverflowError, "timestamp: the clock is beyond a four-digit year");
            return NULL;
        }
        cached_second = now.tv_sec;
    }
    PyObject *text = PyUnicode_New(TS_LEN, 127);
    if (text == NULL)
        return NULL;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(text);
    memcpy(out, cached_prefix, 19);
    out[19] = '.';
    long micro = now.tv_nsec / 1000;
    for (int i = 25; i >= 20; i--, micro /= 10)
        out[i] = (Py_UCS1)('0' + micro % 10);
    out[26] = 'Z';
    return text;
}

/* -- EventMaker ------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *categories;  /* dict */
    PyObject *info;        /* (category, type) */
    PyObject *ecs;
    PyObject *fallback;
} EventMakerObject;

static PyObject *S_timestamp, *S_ecs, *S_event, *S_kind, *S_category, *S_type, *S_action, *S_outcome, *S_id,
    *S_kernel_guard, *S_layer, *S_reason, *S_process, *S_file, *S_default_kind;

/* The named arguments, and the guard's other fields in the order they came. */
typedef struct {
    PyObject *outcome, *layer, *reason, *process, *file, *kind;
} named_t;

/* Whether keyword `name` is `known`: the same object (names in code arrive interned), or
 * equal text (names from a ** mapping need not be). */
static int
same_name(PyObject *name, PyObject *known)
{
    if (name == known)
        return 1;
    return PyUnicode_CheckExact(name) && PyUnicode_GET_LENGTH(name) == PyUnicode_GET_LENGTH(known)
        && PyUnicode_Compare(name, known) == 0;
}

#define ACTION_BY_NAME 6

/* Which named argument keyword `name` is (0-5; ACTION_BY_NAME for "action"), or -1: a
 * field of the guard. */
static int
named_index(PyObject *name)
{
    PyObject *known[] = {S_outcome, S_layer, S_reason, S_process, S_file, S_kind, S_action};
    for (int k = 0; k <= ACTION_BY_NAME; k++)
        if (same_name(name, known[k]))
            return k;
    return -1;
}

/* Sort the keyword arguments: the named ones into `named`, the others into `guard` in
 * the order they came.  0; 1 when a name is given twice, or the action by name (the
 * fallback takes those calls, and says what is wrong with them); -1 on an error. */
static int
sort_keywords(PyObject *const *values, PyObject *kwnames, named_t *named, PyObject *guard)
{
    PyObject **slots[] = {&named->outcome, &named->layer, &named->reason, &named->process, &named->file,
                          &named->kind};
    Py_ssize_t count = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        int k = named_index(name);
        if (k < 0) {
            if (PyDict_SetItem(guard, name, values[i]) < 0)
                return -1;
            continue;
        }
        if (k == ACTION_BY_NAME || *slots[k] != NULL)
            return 1;
        *slots[k] = values[i];
    }
    return 0;
}

/* event["event"]: a new reference, or NULL. */
static PyObject *
event_part(EventMakerObject *self, PyObject *action, named_t *named)
{
    PyObject *found = PyDict_GetItemWithError(self->categories, action);
    if (found == NULL && PyErr_Occurred())
        return NULL;
    PyObject *pair = found ? found : self->info;
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
        PyErr_SetString(PyExc_TypeError, "EventMaker: a category is a (category, type) pair");
        return NULL;
    }
    PyObject *id = next_id();
    if (id == NULL)
        return NULL;
    PyObject *part = PyDict_New();
    if (part == NULL || PyDict_SetItem(part, S_kind, named->kind ? named->kind : S_default_kind) < 0
            || PyDict_SetItem(part, S_category, PyTuple_GET_ITEM(pair, 0)) < 0
            || PyDict_SetItem(part, S_type, PyTuple_GET_ITEM(pair, 1)) < 0
            || PyDict_SetItem(part, S_action, action) < 0 || PyDict_SetItem(part, S_outcome, named->outcome) < 0
            || PyDict_SetItem(part, S_id, id) < 0) {
        Py_DECREF(id);
        Py_XDECREF(part);
        return NULL;
    }
    Py_DECREF(id);
    return part;
}

/* Set `key` to `value` in `dict` when `value` is truthy (make_event's `if reason:`). */
static int
set_if_true(PyObject *dict, PyObject *key, PyObject *value)
{
    if (value == NULL)
        return 0;
    int truth = PyObject_IsTrue(value);
    if (truth <= 0)
        return truth;
    return PyDict_SetItem(dict, key, value);
}

/* The event, around `guard` (its fields sorted in, "layer" first): a new reference, or NULL. */
static PyObject *
build(EventMakerObject *self, PyObject *action, named_t *named, PyObject *guard)
{
    PyObject *part = NULL, *stamp = NULL, *event = NULL;
    if ((part = event_part(self, action, named)) == NULL || (stamp = make_timestamp()) == NULL
            || PyDict_SetItem(guard, S_layer, named->layer) < 0 || (event = PyDict_New()) == NULL)
        goto fail;
    if (PyDict_SetItem(event, S_timestamp, stamp) < 0 || PyDict_SetItem(event, S_ecs, self->ecs) < 0
            || PyDict_SetItem(event, S_event, part) < 0 || PyDict_SetItem(event, S_kernel_guard, guard) < 0
            || set_if_true(part, S_reason, named->reason) < 0 || set_if_true(event, S_process, named->process) < 0
            || set_if_true(event, S_file, named->file) < 0)
        goto fail;
    Py_DECREF(part);
    Py_DECREF(stamp);
    return event;
fail:
    Py_XDECREF(part);
    Py_XDECREF(stamp);
    Py_XDECREF(event);
    return NULL;
}

static PyObject *
EventMaker_make(EventMakerObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs == 1) {
        named_t named = {NULL, NULL, NULL, NULL, NULL, NULL};
        /* "layer" first, as make_event's {"layer": layer, **guard_fields}: its value set in build */
        PyObject *guard = PyDict_New();
        int sorted = guard == NULL || PyDict_SetItem(guard, S_layer, Py_None) < 0
            ? -1 : sort_keywords(args + 1, kwnames, &named, guard);
        PyObject *event = NULL;
        if (sorted == 0 && named.outcome && named.layer)
            event = build(self, args[0], &named, guard);
        Py_XDECREF(guard);
        if (sorted < 0 || event != NULL)
            return event;
        if (PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_OSError))
                return NULL;
            PyErr_Clear();  /* no random bytes to be had here: the Python way (os.urandom) says why */
        }
    }
    return PyObject_Vectorcall(self->fallback, args, (size_t)nargs, kwnames);
}

static int
EventMaker_init(EventMakerObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *categories, *info, *ecs, *fallback;
    static char *names[] = {"categories", "info", "ecs", "fallback", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!OO:EventMaker", names, &PyDict_Type, &categories,
                                     &PyTuple_Type, &info, &ecs, &fallback))
        return -1;
    if (!PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "EventMaker: fallback is a callable");
        return -1;
    }
    Py_XSETREF(self->categories, Py_NewRef(categories));
    Py_XSETREF(self->info, Py_NewRef(info));
    Py_XSETREF(self->ecs, Py_NewRef(ecs));
    Py_XSETREF(self->fallback, Py_NewRef(fallback));
    return 0;
}

static void
EventMaker_dealloc(EventMakerObject *self)
{
    Py_XDECREF(self->categories);
    Py_XDECREF(self->info);
    Py_XDECREF(self->ecs);
    Py_XDECREF(self->fallback);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef EventMaker_methods[] = {
    {"make", (PyCFunction)(void (*)(void))EventMaker_make, METH_FASTCALL | METH_KEYWORDS,
     "make(action, *, outcome, layer, reason=None, process=None, file=None, kind='event', **guard_fields)"
     " -> the event schema.make_event builds"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EventMakerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kernel_guard.events._event.EventMaker",
    .tp_basicsize = sizeof(EventMakerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "EventMaker(categories, info, ecs, fallback).make(...): schema.make_event, natively",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)EventMaker_init,
    .tp_dealloc = (destructor)EventMaker_dealloc,
    .tp_methods = EventMaker_methods,
};

/* -- the module ------------------------------------------------------------------- */

static PyObject *
event_timestamp(PyObject *module, PyObject *unused)
{
    return make_timestamp();
}

static PyObject *
event_new_id(PyObject *module, PyObject *unused)
{
    return next_id();
}

static PyMethodDef event_methods[] = {
    {"timestamp", event_timestamp, METH_NOARGS, "timestamp() -> now as RFC 3339 UTC text with microseconds"},
    {"new_id", event_new_id, METH_NOARGS, "new_id() -> a random (version 4) UUID as text"},
    {NULL, NULL, 0, NULL},
};

static int
intern_names(void)
{
    struct { PyObject **slot; const char *text; } names[] = {
        {&S_timestamp, "@timestamp"}, {&S_ecs, "ecs"}, {&S_event, "event"}, {&S_kind, "kind"},
        {&S_category, "category"}, {&S_type, "type"}, {&S_action, "action"}, {&S_outcome, "outcome"},
        {&S_id, "id"}, {&S_kernel_guard, "kernel_guard"}, {&S_layer, "layer"}, {&S_reason, "reason"},
        {&S_process, "process"}, {&S_file, "file"}, {&S_default_kind, "event"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (*names[i].slot == NULL && (*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL)
            return -1;
    return 0;
}

static int fork_handler_registered;

static int
event_exec(PyObject *module)
{
    if (!fork_handler_registered) {
        if (pthread_atfork(NULL, NULL, after_fork_in_child) != 0) {
            PyErr_SetString(PyExc_ImportError, "pthread_atfork failed: ids could repeat in a forked child");
            return -1;
        }
        fork_handler_registered = 1;
    }
    if (intern_names() < 0 || PyType_Ready(&EventMakerType) < 0)
        return -1;
    Py_INCREF(&EventMakerType);
    if (PyModule_AddObject(module, "EventMaker", (PyObject *)&EventMakerType) < 0) {
        Py_DECREF(&EventMakerType);
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot event_slots[] = {
    {Py_mod_exec, event_exec},
    {0, NULL},
};

static struct PyModuleDef event_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kernel_guard.events._event",
    .m_doc = "make_event, its timestamp and its id, natively (schema.py).",
    .m_size = 0,
    .m_methods = event_methods,
    .m_slots = event_slots,
};

PyMODINIT_FUNC
PyInit__event(void)
{
    return PyModuleDef_Init(&event_module);
}
