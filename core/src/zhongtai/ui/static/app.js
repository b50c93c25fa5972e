// zhongtai web UI: small behaviours, no inline script anywhere (the CSP forbids it).
"use strict";

// Selects marked data-autosubmit submit their form when changed (project switcher, filters).
document.addEventListener("change", (event) => {
  const target = event.target;
  if (target instanceof HTMLSelectElement && target.hasAttribute("data-autosubmit")) {
    target.form.requestSubmit();
  }
});

// Copy buttons: data-copy names the element whose text is copied.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const source = document.querySelector(button.getAttribute("data-copy"));
  if (!source) return;
  try {
    await navigator.clipboard.writeText(source.textContent.trim());
    button.dataset.copied = "true";
  } catch (error) {
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }
});

// The live log viewer: follows GET …/logs/stream (server-sent events), renders in
// batches once per animation frame so that fast output never floods the page, can
// pause (lines keep arriving, the view stops moving), filter by a search text, and
// download everything received.
class LogViewer {
  constructor(root) {
    this.root = root;
    this.out = root.querySelector("[data-log-lines]");
    this.state = root.querySelector("[data-log-state]");
    this.search = root.querySelector("[data-log-search]");
    this.pauseButton = root.querySelector("[data-log-pause]");
    this.lines = [];
    this.pending = [];
    this.paused = false;
    this.filter = "";
    this.scheduled = false;
    this.done = false;
    this.pauseButton.addEventListener("click", () => this.togglePause());
    this.search.addEventListener("input", () => {
      this.filter = this.search.value.toLowerCase();
      this.redraw();
    });
    root.querySelector("[data-log-download]").addEventListener("click", () => this.download());
    this.connect();
  }

  connect() {
    this.source = new EventSource(this.root.dataset.stream);
    this.source.addEventListener("line", (event) => {
      const item = JSON.parse(event.data);
      this.lines.push(item.line);
      this.pending.push(item.line);
      this.schedule();
    });
    this.source.addEventListener("status", (event) => {
      const item = JSON.parse(event.data);
      this.root.dataset.status = item.status;
      if (["succeeded", "failed", "cancelled", "deleted"].includes(item.status)) {
        this.done = true;
        this.source.close();
        this.schedule();
      }
    });
    this.source.addEventListener("error", () => {
      if (!this.done) this.state.textContent = "…";
    });
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    window.requestAnimationFrame(() => {
      this.scheduled = false;
      this.flush();
    });
  }

  matches(line) {
    return !this.filter || line.toLowerCase().includes(this.filter);
  }

  flush() {
    if (!this.paused && this.pending.length) {
      const text = this.pending.filter((line) => this.matches(line)).join("\n");
      this.pending = [];
      if (text) {
        this.out.append(document.createTextNode((this.out.textContent ? "\n" : "") + text));
        this.out.scrollTop = this.out.scrollHeight;
      }
    }
    this.root.dataset.lines = String(this.lines.length);
    this.state.textContent = `${this.lines.length}` + (this.done ? " ✓" : "");
  }

  redraw() {
    this.pending = [];
    this.out.textContent = this.lines.filter((line) => this.matches(line)).join("\n");
    this.out.scrollTop = this.out.scrollHeight;
  }

  togglePause() {
    this.paused = !this.paused;
    const button = this.pauseButton;
    button.textContent = this.paused ? button.dataset.labelResume : button.dataset.labelPause;
    this.root.dataset.paused = String(this.paused);
    if (!this.paused) this.redraw();
  }

  download() {
    const blob = new Blob([this.lines.join("\n") + "\n"], { type: "text/plain" });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = this.root.dataset.name || "job.log";
    document.body.append(link);
    link.click();
    link.remove();
    URL.revokeObjectURL(link.href);
  }
}

function start() {
  document.querySelectorAll("[data-log-viewer]").forEach((root) => {
    if (!root.logViewer) root.logViewer = new LogViewer(root);
  });
}

document.addEventListener("DOMContentLoaded", start);
document.addEventListener("htmx:afterSettle", start);

// Time-series charts: an element with data-chart='{"x": [unix seconds], "series":
// [{"label", "values"}]}' becomes a uPlot chart (uPlot is loaded by the card's page).
const CHART_COLOURS = ["#1b7f3b", "#b3261e", "#2454d6", "#9a6700"];

function drawCharts() {
  if (typeof uPlot === "undefined") return;
  document.querySelectorAll("[data-chart]").forEach((element) => {
    if (element.chart) return;
    const spec = JSON.parse(element.dataset.chart);
    const width = Math.max(element.clientWidth, 240);
    element.chart = new uPlot(
      {
        width,
        height: 160,
        legend: { show: true },
        series: [{}].concat(
          spec.series.map((s, i) => ({
            label: s.label,
            stroke: CHART_COLOURS[i % CHART_COLOURS.length],
            width: 2,
          })),
        ),
        axes: [{}, { size: 40 }],
      },
      [spec.x].concat(spec.series.map((s) => s.values)),
      element,
    );
  });
}

window.addEventListener("load", drawCharts);
document.addEventListener("htmx:afterSettle", drawCharts);
