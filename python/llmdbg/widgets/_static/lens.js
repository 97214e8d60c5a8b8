function render({ model, el }) {
  const payload = parsePayload(model);
  const body = startView(el, "lens", payload);
  emptyMessage(body, "This view is not built yet.");
}
