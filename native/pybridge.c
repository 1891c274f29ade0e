/* pybridge.c: the CPython C-API as seen by the engine.  The library never
 * links libpython (it is preloaded into processes that have none), so
 * Python hands it the entry points it needs by name, once, at start-up.
 * Every call through this table happens with the GIL held, except
 * PyEval_RestoreThread, which takes it. */
#include <string.h>

#include "internal.h"

ip_pyapi_t ip__py;
static int ready;

/* optional: absent from some supported versions; pyver.c says when the
 * engine needs it after all (interpose_py_init checks). */
#define BINDING(name) {#name, offsetof(ip_pyapi_t, name), 0}
#define OPTIONAL(name) {#name, offsetof(ip_pyapi_t, name), 1}
static const struct {
  const char *name;
  size_t offset;
  int optional;
} bindings[] = {
    BINDING(PyThreadState_New),
    BINDING(PyThreadState_Get),
    BINDING(PyThreadState_Clear),
    BINDING(PyThreadState_DeleteCurrent),
    BINDING(PyThreadState_Delete),
    BINDING(PyEval_RestoreThread),
    BINDING(PyEval_SaveThread),
    BINDING(PyObject_CallNoArgs),
    BINDING(Py_IncRef),
    BINDING(Py_DecRef),
    BINDING(PyErr_WriteUnraisable),
    BINDING(PyThreadState_GetUnchecked),
    BINDING(PyObject_GetArenaAllocator),
    BINDING(PyObject_SetArenaAllocator),
    BINDING(PyErr_SetInterruptEx),
    BINDING(PyThreadState_GetFrame),
    BINDING(PyInterpreterState_ThreadHead),
    BINDING(PyThreadState_Next),
    BINDING(PyGILState_GetThisThreadState),
    BINDING(PyGILState_Ensure),
    BINDING(PyGILState_Release),
    BINDING(PyInterpreterState_Head),
    BINDING(PyInterpreterState_Next),
    OPTIONAL(PyUnstable_ThreadState_SetStackProtection),
};
#define NBINDINGS (sizeof(bindings) / sizeof(bindings[0]))


int interpose_abi_version(void) { return INTERPOSE_ABI_VERSION; }


const char *interpose_build_id(void) { return IP_BUILD_ID; }


int interpose_py_bind(const char *name, void *fn) {
  for (size_t i = 0; i < NBINDINGS; i++) {
    if (strcmp(bindings[i].name, name) == 0) {
      memcpy((char *) &ip__py + bindings[i].offset, &fn, sizeof(fn));
      return 0;
    }
  }
  return -ENOENT;
}


int interpose_py_init(unsigned long hexversion, void *interp) {
  /* The engine serves one interpreter, the first to call this (the main
   * one: the Python side refuses a subinterpreter before calling); a
   * second caller must not replace it under the running coroutines. */
  if (ready)
    return interp == ip__py.interp ? 0 : -EXDEV;
  int r = ip__pyver_select(hexversion);
  if (r < 0)
    return r;
  for (size_t i = 0; i < NBINDINGS; i++) {
    void *fn;
    memcpy(&fn, (char *) &ip__py + bindings[i].offset, sizeof(fn));
    if (fn == NULL && !bindings[i].optional)
      return -EINVAL;
  }
  if (ip__pyver_needs_stack_protection() &&
      ip__py.PyUnstable_ThreadState_SetStackProtection == NULL)
    return -ENOSYS;
  if (interp == NULL)
    return -EINVAL;
  ip__py.interp = interp;
  ip__py.hexversion = hexversion;
  r = ip__gilstate_init();
  if (r < 0)
    return r;
  /* The arena allocator is not replaced here: binding the library (import
   * interpose) must leave the process as it was.  The first scheduler
   * replaces it (ip__sched_ensure). */
  ready = 1;
  return 0;
}


int ip__py_ready(void) { return ready; }


int ip__py_tstate_alive(void *tstate) {
  void *ts = ip__py.PyInterpreterState_ThreadHead(ip__py.interp);
  for (; ts != NULL; ts = ip__py.PyThreadState_Next(ts))
    if (ts == tstate)
      return 1;
  return 0;
}


void ip__py_run_body(ip_coro_t *co) {
  ip__py.PyEval_RestoreThread(co->tstate);
  void *result = ip__py.PyObject_CallNoArgs(co->body);
  if (result != NULL)
    ip__py.Py_DecRef(result);
  else /* the bootstrap catches everything; this is a bug in it */
    ip__py.PyErr_WriteUnraisable(co->body);
  ip__py.Py_DecRef(co->body);
  co->body = NULL;
  ip__py.PyThreadState_Clear(co->tstate);
  /* Cleared while the GIL is still held: the blocking monitor, which reads
   * tstate with the GIL held, never sees a deleted thread state. */
  __atomic_store_n(&co->tstate, NULL, __ATOMIC_RELAXED);
  ip__py.PyThreadState_DeleteCurrent();
}
