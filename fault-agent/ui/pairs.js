// Which pod pairs the live faults cut or degrade: a sender x receiver matrix built from each
// fault's targets, peers (pods by selector, and pods inside `peer_cidrs`) and direction.

/// An address as a BigInt and its width in bits (32 or 128); null if not an address.
function addr(text) {
  if (text.includes(".")) {
    const p = text.split(".").map(Number);
    if (p.length !== 4 || p.some((n) => !(n >= 0 && n <= 255))) return null;
    return { bits: 32, n: p.reduce((acc, n) => (acc << 8n) | BigInt(n), 0n) };
  }
  const [head, tail = ""] = text.split("::");
  const h = head ? head.split(":") : [];
  const t = text.includes("::") ? (tail ? tail.split(":") : []) : [];
  const groups = text.includes("::") ? [...h, ...Array(8 - h.length - t.length).fill("0"), ...t] : h;
  if (groups.length !== 8) return null;
  return { bits: 128, n: groups.reduce((acc, g) => (acc << 16n) | BigInt(parseInt(g, 16) || 0), 0n) };
}

/// Whether `ip` is inside `cidr` (`198.18.0.0/15`, `fd00::/8`).
export function inCidr(ip, cidr) {
  const [net, len] = cidr.split("/");
  const a = addr(ip);
  const b = addr(net);
  if (!a || !b || a.bits !== b.bits) return false;
  const shift = BigInt(a.bits - Number(len));
  return a.n >> shift === b.n >> shift;
}

const key = (p) => `${p.namespace}/${p.name}`;

/// The pods a fault's peers cover, by `namespace/name`, less the protected addresses' pods.
function peerKeys(fault, pods) {
  const protectedIps = new Set(Object.values(fault.protected ?? {}).flat());
  const keys = new Set(fault.peers.map(key));
  for (const pod of pods) {
    if (pod.ips.some((ip) => fault.peer_cidrs.some((c) => inCidr(ip, c)))) keys.add(key(pod));
  }
  for (const pod of pods) {
    if (pod.ips.length && pod.ips.every((ip) => protectedIps.has(ip))) keys.delete(key(pod));
  }
  return keys;
}

/// `Map("sender|receiver" -> [{id, cut}])` for every live fault.
export function affectedPairs(faults, pods) {
  const out = new Map();
  const add = (from, to, fault) => {
    if (from === to) return;
    const k = `${from}|${to}`;
    if (!out.has(k)) out.set(k, []);
    out.get(k).push({ id: fault.id, cut: Boolean(fault.spec.partition) });
  };
  for (const fault of faults.filter((f) => f.state === "active" || f.state === "pending")) {
    const dir = fault.spec.direction ?? "egress";
    const peers = peerKeys(fault, pods);
    for (const t of fault.targets.map(key)) {
      for (const p of peers) {
        if (dir !== "ingress") add(t, p, fault);
        if (dir !== "egress") add(p, t, fault);
      }
    }
  }
  return out;
}

/// Renders the matrix into `root` (a table; cells carry `data-from`/`data-to` and a class
/// `cut` or `degraded`, their title names the faults).
export function renderPairs(root, faults, pods) {
  const pairs = affectedPairs(faults, pods);
  const names = pods.map(key).sort();
  const table = document.createElement("table");
  table.className = "pairs";
  const head = table.createTHead().insertRow();
  head.appendChild(document.createElement("th")).textContent = "from \\ to";
  for (const n of names) head.appendChild(document.createElement("th")).textContent = n.split("/")[1];
  const body = table.createTBody();
  for (const from of names) {
    const row = body.insertRow();
    row.appendChild(document.createElement("th")).textContent = from.split("/")[1];
    for (const to of names) {
      const cell = row.insertCell();
      cell.dataset.from = from;
      cell.dataset.to = to;
      const hits = pairs.get(`${from}|${to}`) ?? [];
      if (hits.length) {
        cell.className = hits.some((h) => h.cut) ? "cut" : "degraded";
        cell.textContent = hits.some((h) => h.cut) ? "✕" : "~";
        cell.title = hits.map((h) => h.id).join(", ");
      } else if (from === to) {
        cell.className = "self";
      }
    }
  }
  root.replaceChildren(table);
}
