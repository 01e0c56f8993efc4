// The inject form to a FaultSpec (the body of `POST /v1/faults`, `fault-api/src/spec.rs`).
// Values go to the API as typed: it validates them and its message is shown as is.

/// Lines (or commas, with `commas`) of a text field, trimmed, empty ones dropped.
function list(text, commas = false) {
  return text
    .split(commas ? /[\n,]/ : /\n/)
    .map((s) => s.trim())
    .filter((s) => s !== "");
}

/// `key=value` lines to an object; a line without `=` is a key with an empty value.
function labels(text) {
  const out = {};
  for (const line of list(text)) {
    const i = line.indexOf("=");
    if (i < 0) out[line] = "";
    else out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return out;
}

/// A whole number is sent as a number, anything else as the text (the API names the field).
function portValue(text) {
  return /^\d+$/.test(text) ? Number(text) : text;
}

const TEXT_FIELDS = [
  "pod_prefix", "selector", "to_namespace", "protocol", "partition", "loss_percent",
  "corrupt_percent", "delay", "jitter", "duplicate_percent", "rate", "duration",
];

/// The spec the form describes; fields left empty are not sent.
export function specFromForm(form) {
  const v = (name) => form.elements[name].value.trim();
  const spec = { namespace: v("namespace"), direction: v("direction") };
  for (const name of TEXT_FIELDS) {
    if (v(name) !== "") spec[name] = v(name);
  }
  if (v("port") !== "") spec.port = portValue(v("port"));
  const selectors = list(form.elements.to_selectors.value);
  if (selectors.length) spec.to_selectors = selectors;
  const cidrs = list(form.elements.to_cidrs.value, true);
  if (cidrs.length) spec.to_cidrs = cidrs;
  const allowed = list(form.elements.allow_namespaces.value, true);
  if (allowed.length) spec.allow_namespaces = allowed;
  const l = labels(form.elements.labels.value);
  if (Object.keys(l).length) spec.labels = l;
  if (form.elements.block_nats.checked) spec.block_nats = true;
  return spec;
}

/// What the fault does, in short: `partition`, `loss 30%`, `delay 100ms ± 10ms`, ...
export function kind(spec) {
  const parts = [];
  if (spec.partition) parts.push(spec.partition === "packets" ? "partition" : `partition (${spec.partition})`);
  if (spec.loss_percent !== undefined) parts.push(`loss ${spec.loss_percent}%`);
  if (spec.corrupt_percent !== undefined) parts.push(`corrupt ${spec.corrupt_percent}%`);
  if (spec.delay !== undefined) parts.push(`delay ${spec.delay}${spec.jitter ? ` ± ${spec.jitter}` : ""}`);
  if (spec.duplicate_percent !== undefined) parts.push(`duplicate ${spec.duplicate_percent}%`);
  if (spec.rate !== undefined) parts.push(`rate ${spec.rate}`);
  return parts.join(", ");
}
