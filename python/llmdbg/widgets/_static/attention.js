function render({ model, el }) {
  const payload = parsePayload(model);
  const body = startView(el, "attention", payload);
  emptyMessage(body, "This view is not built yet.");
}
