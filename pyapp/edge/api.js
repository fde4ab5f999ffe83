// Wraps an async entry point of pyapp/edge/api.py for JS callers (window.pyapp): Python answers
// {value} or {error: {message, code, option, traceback}}, and an error becomes one JS Error whose
// message is a sentence; the Python traceback stays on `pythonTraceback` for debugging.
((run) => async (...args) => {
  const r = await run(...args);
  if (r && r.error) {
    const e = new Error(r.error.message);
    e.name = 'PyappError';
    e.code = r.error.code;
    if (r.error.option) e.option = r.error.option;
    e.pythonTraceback = r.error.traceback;
    throw e;
  }
  return r.value;
})
