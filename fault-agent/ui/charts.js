// Per-fault counter history and its small chart: packets per second of each counter over the
// last minute, from the cumulative counters `GET /v1/faults` returns (one sample a refresh).
/* global Chart */

export const COUNTERS = ["matched", "dropped", "corrupted", "delayed", "duplicated"];
const COLORS = {
  matched: "#1f77b4",
  dropped: "#d62728",
  corrupted: "#9467bd",
  delayed: "#ff7f0e",
  duplicated: "#2ca02c",
};
const WINDOW_MS = 60_000;

/// Samples `{t, counters}` of one fault, oldest first, at most the last minute.
class History {
  constructor() {
    this.samples = [];
  }

  push(t, counters) {
    this.samples.push({ t, counters: { ...counters } });
    while (this.samples.length > 2 && t - this.samples[0].t > WINDOW_MS) this.samples.shift();
  }

  /// Per-second rates between consecutive samples: `{x: seconds ago, y: packets/s}` per counter.
  rates(now) {
    const out = Object.fromEntries(COUNTERS.map((c) => [c, []]));
    for (let i = 1; i < this.samples.length; i++) {
      const a = this.samples[i - 1];
      const b = this.samples[i];
      const dt = (b.t - a.t) / 1000;
      if (dt <= 0) continue;
      for (const c of COUNTERS) {
        const d = Math.max(0, (b.counters[c] ?? 0) - (a.counters[c] ?? 0));
        out[c].push({ x: (b.t - now) / 1000, y: d / dt });
      }
    }
    return out;
  }
}

function newChart(canvas) {
  return new Chart(canvas, {
    type: "line",
    data: {
      datasets: COUNTERS.map((c) => ({
        label: c,
        data: [],
        borderColor: COLORS[c],
        backgroundColor: COLORS[c],
        borderWidth: c === "matched" ? 2 : 1.5,
        // Matched under the others (a partition drops all it matches: same line), dashed.
        borderDash: c === "matched" ? [4, 3] : [],
        order: c === "matched" ? 1 : 0,
        pointRadius: 0,
        tension: 0.2,
      })),
    },
    options: {
      animation: false,
      responsive: false,
      parsing: false,
      plugins: { legend: { display: false }, tooltip: { enabled: true } },
      scales: {
        x: { type: "linear", min: -60, max: 0, ticks: { display: false }, grid: { display: false } },
        y: { beginAtZero: true, ticks: { maxTicksLimit: 3, font: { size: 9 } } },
      },
    },
  });
}

/// Histories and charts by fault id.
export class Charts {
  constructor() {
    this.histories = new Map();
    this.charts = new Map();
  }

  /// Records a fault's counters at time `t` (ms).
  record(id, t, counters) {
    if (!this.histories.has(id)) this.histories.set(id, new History());
    this.histories.get(id).push(t, counters);
  }

  /// Draws fault `id`'s rates into `canvas` (a chart is made once per canvas).
  draw(id, canvas, now) {
    let chart = this.charts.get(id);
    if (!chart || chart.canvas !== canvas) {
      chart?.destroy();
      chart = newChart(canvas);
      this.charts.set(id, chart);
    }
    const rates = this.histories.get(id)?.rates(now) ?? {};
    chart.data.datasets.forEach((ds) => {
      ds.data = rates[ds.label] ?? [];
    });
    chart.update("none");
  }

  /// Forgets faults no longer listed.
  keepOnly(ids) {
    for (const id of [...this.histories.keys()]) {
      if (!ids.has(id)) {
        this.histories.delete(id);
        this.charts.get(id)?.destroy();
        this.charts.delete(id);
      }
    }
  }
}
