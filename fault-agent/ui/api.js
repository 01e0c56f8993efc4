// The agent's native API (/v1), called with the bearer token the user typed. The token stays in
// this tab's sessionStorage; every call sends it as `Authorization: Bearer <token>`.

const TOKEN_KEY = "faultline.token";

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) ?? "";
}

/// An answer that is not 2xx: `message` is the API's own text (`error.message` of its JSON body),
/// the same the CLI prints.
export class ApiError extends Error {
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

/// Calls `method path` with an optional JSON body; resolves to the decoded JSON answer.
export async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!res.ok) {
    const err = json?.error;
    throw new ApiError(res.status, err?.message ?? (text || res.statusText), err?.field);
  }
  return json;
}

export const listFaults = () => call("GET", "/v1/faults");
export const listPods = () => call("GET", "/v1/pods");
export const createFault = (spec) => call("POST", "/v1/faults", spec);
export const recoverFault = (id) => call("POST", `/v1/faults/${encodeURIComponent(id)}/recover`);
export const verifyFault = (id) => call("POST", `/v1/faults/${encodeURIComponent(id)}/verify`);
export const cleanup = (request) => call("POST", "/v1/faults/cleanup", request);
