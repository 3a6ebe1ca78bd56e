/* kernel_guard.events._aggregate_key: the aggregation key of an event, and the aggregator's call, in C.
 *
 * Why this exists: every event a kernel emits is keyed by the aggregator on the
 * emitting thread (aggregate.py, _key): sixteen fields from five objects.  In
 * Python that is 0.5-0.9 us an event (measured), up to a tenth of the emitting
 * thread's share of the pipeline; here it is a few dictionary lookups.
 *
 * KeyMaker(plain_types, fallback)
 *     plain_types  a tuple of types whose instances are read with dict lookups
 *                  (dict, and subclasses that do not change .get: schema.Shared)
 *     fallback     aggregate._key itself, called for any event this code does
 *                  not read exactly as it does (another mapping type, a list
 *                  subclass for args, a part that is neither a plain mapping
 *                  nor None)
 * KeyMaker(event) -> the same tuple as aggregate._key(event), or what it raises.
 *
 * Step: the base type of aggregate.Aggregate, whose call it makes up to the point
 * where a count is kept (0.4-0.6 us for an event the full table passes on, from
 * 0.9-1.3 in Python, measured).
 *     Step.__init__(self, never, key_of)
 *         never   the actions recorded one by one (NEVER_AGGREGATED, a frozenset)
 *         key_of  the key maker (a KeyMaker: called here without a call's overhead)
 *     self.interval, self.max_keys, self._slots  Aggregate's own attributes, held here
 *     self(event) passes on an event with no interval or an action recorded one by
 *     one, and a new key when the table is full; every other event goes to
 *     self._count(event, key), the Python code that keeps counts under the lock.
 *     An event whose action it does not read exactly as the Python code does (not a
 *     dict, an event part of another kind, an action that is not a str) goes to
 *     self._call(event), before anything is done.
 * tests/events/test_aggregate_key.py holds both to the Python code.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <structmember.h>

typedef struct {
    PyObject_HEAD
    PyObject *plain_types;  /* tuple of types */
    PyObject *fallback;
} KeyMakerObject;

/* interned field names, made once */
static PyObject *S_event, *S_kernel_guard, *S_process, *S_file, *S_user, *S_name, *S_kernel_id, *S_notebook,
    *S_execution_count, *S_cell_id, *S_pid, *S_action, *S_outcome, *S_reason, *S_layer, *S_technique,
    *S_target, *S_executable, *S_args, *S_command_line, *S_path, *S__call, *S__count;

static int
is_plain(KeyMakerObject *self, PyObject *obj)
{
    PyTypeObject *type = Py_TYPE(obj);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(self->plain_types); i++)
        if ((PyObject *)type == PyTuple_GET_ITEM(self->plain_types, i))
            return 1;
    return 0;
}

/* dict.get(key) as a new reference (None when missing), or NULL with an error set. */
static PyObject *
get(PyObject *mapping, PyObject *key)
{
    if (mapping == NULL)
        Py_RETURN_NONE;
    PyObject *value = PyDict_GetItemWithError(mapping, key);
    if (value == NULL) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE;
    }
    Py_INCREF(value);
    return value;
}

/* `event.get(name) or {}` as the mapping to read (borrowed; NULL means an empty one).
 * Returns 0, or 1 when the part is of a kind only the fallback reads exactly. */
static int
part(KeyMakerObject *self, PyObject *event, PyObject *name, PyObject **out)
{
    PyObject *value = event ? PyDict_GetItemWithError(event, name) : NULL;
    *out = NULL;
    if (value == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (value == Py_None)
        return 0;
    if (!is_plain(self, value))
        return 1;
    *out = PyDict_GET_SIZE(value) ? value : NULL;  /* an empty mapping is falsy: {} instead */
    return 0;
}

/* The key of one event: a new reference, or NULL with an error set. */
static PyObject *
make_key(KeyMakerObject *self, PyObject *event)
{
    if (!is_plain(self, event))
        return PyObject_CallOneArg(self->fallback, event);
    PyObject *ev = NULL, *guard = NULL, *proc = NULL, *user = NULL, *file = NULL;
    /* each step: -1 an error, 1 a part only the fallback reads exactly, 0 go on */
    int odd = part(self, event, S_event, &ev);
    if (!odd)
        odd = part(self, event, S_kernel_guard, &guard);
    if (!odd)
        odd = part(self, event, S_process, &proc);
    if (!odd)
        odd = part(self, event, S_user, &user);
    if (odd < 0)
        return NULL;
    /* file is read only when it is a dict (any other value: None, as aggregate._key does) */
    PyObject *file_value = odd ? NULL : PyDict_GetItemWithError(event, S_file);
    if (file_value == NULL && PyErr_Occurred())
        return NULL;
    if (file_value != NULL && PyDict_Check(file_value)) {
        if (!is_plain(self, file_value))
            odd = 1;
        else
            file = file_value;
    }
    PyObject *args_value = NULL;
    if (!odd) {
        args_value = get(proc, S_args);
        if (args_value == NULL)
            return NULL;
        if (PyList_Check(args_value) && !PyList_CheckExact(args_value))
            odd = 1;  /* tuple() of a list subclass iterates it its own way */
    }
    if (odd) {
        Py_XDECREF(args_value);
        return PyObject_CallOneArg(self->fallback, event);
    }
    if (PyList_CheckExact(args_value)) {
        PyObject *as_tuple = PyList_AsTuple(args_value);
        Py_DECREF(args_value);
        if (as_tuple == NULL)
            return NULL;
        args_value = as_tuple;
    }
    PyObject *key = PyTuple_New(16);
    if (key == NULL) {
        Py_DECREF(args_value);
        return NULL;
    }
    struct { PyObject **mapping; PyObject *name; } fields[16] = {
        {&user, S_name}, {&guard, S_kernel_id}, {&guard, S_notebook}, {&guard, S_execution_count},
        {&guard, S_cell_id}, {&proc, S_pid}, {&ev, S_action}, {&ev, S_outcome}, {&ev, S_reason},
        {&guard, S_layer}, {&guard, S_technique}, {&guard, S_target}, {&proc, S_executable}, {NULL, NULL},
        {&proc, S_command_line}, {&file, S_path},
    };
    for (int i = 0; i < 16; i++) {
        PyObject *value = i == 13 ? args_value : get(*fields[i].mapping, fields[i].name);
        if (value == NULL) {
            if (i < 13)
                Py_DECREF(args_value);
            Py_DECREF(key);
            return NULL;
        }
        PyTuple_SET_ITEM(key, i, value);
    }
    return key;
}

static PyObject *
KeyMaker_call(KeyMakerObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *event;
    if (!PyArg_UnpackTuple(args, "KeyMaker", 1, 1, &event) || (kwargs && PyDict_GET_SIZE(kwargs))) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "KeyMaker takes one event");
        return NULL;
    }
    return make_key(self, event);
}

static int
KeyMaker_init(KeyMakerObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *plain_types, *fallback;
    if (!PyArg_ParseTuple(args, "O!O:KeyMaker", &PyTuple_Type, &plain_types, &fallback))
        return -1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(plain_types); i++) {
        PyObject *type = PyTuple_GET_ITEM(plain_types, i);
        if (!PyType_Check(type) || !PyType_IsSubtype((PyTypeObject *)type, &PyDict_Type)) {
            PyErr_SetString(PyExc_TypeError, "KeyMaker: plain_types are dict types");
            return -1;
        }
    }
    if (!PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "KeyMaker: fallback must be callable");
        return -1;
    }
    Py_INCREF(plain_types);
    Py_INCREF(fallback);
    Py_XSETREF(self->plain_types, plain_types);
    Py_XSETREF(self->fallback, fallback);
    return 0;
}

static void
KeyMaker_dealloc(KeyMakerObject *self)
{
    Py_XDECREF(self->plain_types);
    Py_XDECREF(self->fallback);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject KeyMakerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kernel_guard.events._aggregate_key.KeyMaker",
    .tp_basicsize = sizeof(KeyMakerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "KeyMaker(plain_types, fallback)(event) -> aggregate._key(event), read natively",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)KeyMaker_init,
    .tp_dealloc = (destructor)KeyMaker_dealloc,
    .tp_call = (ternaryfunc)KeyMaker_call,
};

/* -- Step: the aggregator's call, up to the point where it needs a slot -------- */

typedef struct {
    PyObject_HEAD
    double interval;
    Py_ssize_t max_keys;
    PyObject *slots;    /* Aggregate._slots: key -> _Slot */
    PyObject *never;    /* actions recorded one by one (a frozenset of str) */
    PyObject *key_of;   /* a KeyMaker, or any callable making the key */
} StepObject;

/* event["event"]["action"] as `(event.get("event") or {}).get("action")` reads it, when
 * this code can read it exactly: 1 and *action borrowed (NULL for none), 0 when only the
 * Python code reads it exactly, -1 on an error. */
static int
action_of(PyObject *event, PyObject **action)
{
    *action = NULL;
    if (!PyDict_CheckExact(event))
        return 0;
    PyObject *ev = PyDict_GetItemWithError(event, S_event);
    if (ev == NULL)
        return PyErr_Occurred() ? -1 : 1;
    if (ev == Py_None)
        return 1;
    if (!PyDict_CheckExact(ev))
        return 0;  /* another truthy or falsy kind of part: the Python code's `or {}` decides */
    *action = PyDict_GetItemWithError(ev, S_action);
    if (*action == NULL && PyErr_Occurred())
        return -1;
    return *action == NULL || *action == Py_None || PyUnicode_CheckExact(*action);
}

static PyObject *
Step_call(StepObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *event, *action;
    if (!PyArg_UnpackTuple(args, "Aggregate", 1, 1, &event) || (kwargs && PyDict_GET_SIZE(kwargs))) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "Aggregate takes one event");
        return NULL;
    }
    if (self->slots == NULL || self->never == NULL || self->key_of == NULL)
        return PyErr_Format(PyExc_RuntimeError, "Aggregate: Step.__init__ was not called");
    if (self->interval <= 0)
        return Py_NewRef(event);
    int readable = action_of(event, &action);
    if (readable < 0)
        return NULL;
    if (!readable)
        return PyObject_CallMethodOneArg((PyObject *)self, S__call, event);
    if (action != NULL && action != Py_None) {
        int never = PySet_Contains(self->never, action);  /* an exact str: no Python code runs */
        if (never < 0)
            return NULL;
        if (never)
            return Py_NewRef(event);
    }
    /* held, not borrowed: the key's Python fallback, or a key's __eq__, may run code that
     * sets them anew */
    PyObject *key_of = Py_NewRef(self->key_of);
    PyObject *key = Py_TYPE(key_of) == &KeyMakerType ? make_key((KeyMakerObject *)key_of, event)
                                                    : PyObject_CallOneArg(key_of, event);
    Py_DECREF(key_of);
    if (key == NULL)
        return NULL;
    PyObject *slots = self->slots;
    if (slots != NULL && PyDict_CheckExact(slots)) {
        /* Read without the lock: a read leaves the table as it is, so expire() may walk
         * it meanwhile, and a race only ever passes an event on in full. */
        Py_INCREF(slots);
        int tracked = PyDict_Contains(slots, key);
        int full = PyDict_GET_SIZE(slots) >= self->max_keys;
        Py_DECREF(slots);
        if (tracked < 0) {
            if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
                Py_DECREF(key);
                return NULL;
            }
            PyErr_Clear();  /* unhashable: _count passes it on, as the Python code does */
        }
        else if (!tracked && full) {
            Py_DECREF(key);
            return Py_NewRef(event);  /* no room for another key: recorded in full */
        }
    }
    PyObject *call[3] = {(PyObject *)self, event, key};
    PyObject *result = PyObject_VectorcallMethod(S__count, call, 3, NULL);
    Py_DECREF(key);
    return result;
}

static int
Step_init(StepObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *never, *key_of;
    static char *names[] = {"never", "key_of", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O:Step", names, &PyFrozenSet_Type, &never, &key_of))
        return -1;
    if (!PyCallable_Check(key_of)) {
        PyErr_SetString(PyExc_TypeError, "Step: key_of must be callable");
        return -1;
    }
    Py_XSETREF(self->never, Py_NewRef(never));
    Py_XSETREF(self->key_of, Py_NewRef(key_of));
    if (self->slots == NULL && (self->slots = PyDict_New()) == NULL)
        return -1;
    return 0;
}

static int
Step_traverse(StepObject *self, visitproc visit, void *arg)
{
    /* not the type: a Python subclass's traverse visits its (heap) type itself */
    Py_VISIT(self->slots);
    Py_VISIT(self->never);
    Py_VISIT(self->key_of);
    return 0;
}

static int
Step_clear(StepObject *self)
{
    Py_CLEAR(self->slots);
    Py_CLEAR(self->never);
    Py_CLEAR(self->key_of);
    return 0;
}

static void
Step_dealloc(StepObject *self)
{
    /* a Python subclass's dealloc releases its (heap) type after this returns */
    PyObject_GC_UnTrack(self);
    Step_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef Step_members[] = {
    {"interval", T_DOUBLE, offsetof(StepObject, interval), 0, "seconds of one aggregation interval"},
    {"max_keys", T_PYSSIZET, offsetof(StepObject, max_keys), 0, "keys tracked at most"},
    {"_slots", T_OBJECT_EX, offsetof(StepObject, slots), 0, "each tracked key's slot"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject StepType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "kernel_guard.events._aggregate_key.Step",
    .tp_basicsize = sizeof(StepObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The base of aggregate.Aggregate: its call, natively, up to the point where it needs a slot",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Step_init,
    .tp_traverse = (traverseproc)Step_traverse,
    .tp_clear = (inquiry)Step_clear,
    .tp_dealloc = (destructor)Step_dealloc,
    .tp_call = (ternaryfunc)Step_call,
    .tp_members = Step_members,
};

static int
intern_names(void)
{
    struct { PyObject **slot; const char *text; } names[] = {
        {&S_event, "event"}, {&S_kernel_guard, "kernel_guard"}, {&S_process, "process"}, {&S_file, "file"},
        {&S_user, "user"}, {&S_name, "name"}, {&S_kernel_id, "kernel_id"}, {&S_notebook, "notebook"},
        {&S_execution_count, "execution_count"}, {&S_cell_id, "cell_id"}, {&S_pid, "pid"},
        {&S_action, "action"}, {&S_outcome, "outcome"}, {&S_reason, "reason"}, {&S_layer, "layer"},
        {&S_technique, "technique"}, {&S_target, "target"}, {&S_executable, "executable"},
        {&S_args, "args"}, {&S_command_line, "command_line"}, {&S_path, "path"},
        {&S__call, "_call"}, {&S__count, "_count"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (*names[i].slot == NULL && (*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL)
            return -1;
    return 0;
}

static int
aggregate_key_exec(PyObject *module)
{
    if (intern_names() < 0 || PyType_Ready(&KeyMakerType) < 0 || PyType_Ready(&StepType) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "KeyMaker", (PyObject *)&KeyMakerType) < 0
            || PyModule_AddObjectRef(module, "Step", (PyObject *)&StepType) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot aggregate_key_slots[] = {
    {Py_mod_exec, aggregate_key_exec},
    {0, NULL},
};

static struct PyModuleDef aggregate_key_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kernel_guard.events._aggregate_key",
    .m_doc = "The aggregation key of an event (aggregate._key) and the aggregator's call, natively.",
    .m_size = 0,
    .m_slots = aggregate_key_slots,
};

PyMODINIT_FUNC
PyInit__aggregate_key(void)
{
    return PyModuleDef_Init(&aggregate_key_module);
}
