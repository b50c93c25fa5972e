// The sweep page: one scatter chart per searched parameter (its value against the
// metric, one point per completed trial, the best one larger), and, while the sweep
// runs, the trial table and the charts kept up to date from
// GET /api/v1/train/sweeps/{id}. Every text that came from a user (parameter values,
// failure reasons) goes into the page as textContent; ids go into links encoded.
"use strict";

(function () {
  const LIVE = new Set(["queued", "scheduled", "held", "running"]);
  const HEIGHT = 220;
  const POINT = "#2454d6";
  const BEST = "#b3261e";

  async function getJSON(url) {
    const answer = await fetch(url, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      cache: "no-store",
    });
    if (!answer.ok) throw new Error(`${answer.status} ${answer.statusText}`);
    return answer.json();
  }

  // A value as the page's table shows it (the template's param macro).
  function show(value) {
    if (value === null || value === undefined) return "—";
    if (typeof value === "number" && !Number.isInteger(value)) {
      return String(parseFloat(value.toPrecision(6)));
    }
    return String(value);
  }

  function cell(row, content, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    if (content instanceof Node) td.append(content);
    else if (content !== undefined) td.textContent = content;
    row.append(td);
    return td;
  }

  function link(href, label) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = label;
    return a;
  }

  class SweepPage {
    constructor(root) {
      this.root = root;
      this.url = root.dataset.sweepUrl;
      this.interval = Math.max(1, Number(root.dataset.interval) || 3) * 1000;
      this.names = JSON.parse(root.dataset.names || "[]");
      this.states = JSON.parse(root.dataset.states || "{}");
      this.badges = JSON.parse(root.dataset.badges || "{}");
      this.project = root.dataset.project || "";
      this.empty = root.dataset.emptyText || "";
      this.bestText = root.dataset.bestText || "best";
      this.charts = new Map();
      this.drawCharts(JSON.parse(root.dataset.sweepData || "{}"));
      if (root.dataset.live === "true") this.schedule();
    }

    href(path, id) {
      const query = this.project ? `?project=${encodeURIComponent(this.project)}` : "";
      return `${path}${encodeURIComponent(id)}${query}`;
    }

    schedule() {
      window.setTimeout(() => this.tick(), this.interval);
    }

    async tick() {
      if (document.hidden) {
        this.schedule();
        return;
      }
      let sweep = null;
      try {
        sweep = await getJSON(this.url);
      } catch (error) {
        this.root.dataset.error = String(error); // a blip: try again at the next tick
      }
      if (sweep) {
        if (!LIVE.has(sweep.status)) {
          window.location.reload(); // finished: the page shows the result as rendered
          return;
        }
        this.renderTable(sweep);
        this.drawCharts(sweep);
        const progress = this.root.querySelector("[data-sweep-progress]");
        if (progress) progress.textContent = sweep.progress_message || "—";
        this.root.dataset.refreshed = String(Number(this.root.dataset.refreshed || 0) + 1);
      }
      this.schedule();
    }

    renderTable(sweep) {
      const body = this.root.querySelector("[data-trials] tbody");
      if (!body) return;
      const rows = sweep.trials.map((trial) => {
        const row = document.createElement("tr");
        row.dataset.trial = String(trial.number);
        const number = cell(row, String(trial.number), "num");
        if (trial.best) {
          row.className = "best";
          row.dataset.best = "";
          const mark = document.createElement("span");
          mark.className = "best-mark";
          mark.textContent = ` ★ ${this.bestText}`;
          number.append(mark);
        }
        const badge = document.createElement("span");
        badge.className = `badge badge-${this.badges[trial.state] || "other"}`;
        badge.dataset.state = trial.state;
        badge.textContent = this.states[trial.state] || trial.state;
        cell(row, badge);
        for (const name of this.names) {
          const code = document.createElement("code");
          code.textContent = show(trial.params[name]);
          cell(row, code);
        }
        cell(row, show(trial.value), "num").dataset.value = "";
        cell(row, trial.job ? link(this.href("/ui/jobs/", trial.job), trial.job_status || trial.job) : "");
        cell(
          row,
          trial.run ? link(this.href("/ui/train/runs/", trial.run), trial.run_name) : trial.run_name,
        );
        cell(row, trial.reason || "", "trial-note");
        return row;
      });
      if (rows.length) body.replaceChildren(...rows);
    }

    drawCharts(sweep) {
      const done = (sweep.trials || []).filter(
        (trial) => trial.state === "completed" && trial.value !== null,
      );
      this.root.ownerDocument.querySelectorAll("[data-scatter]").forEach((figure) => {
        this.drawOne(figure, sweep, done);
      });
    }

    drawOne(figure, sweep, done) {
      const name = figure.dataset.param;
      const spec = (sweep.space || {})[name];
      const plot = figure.querySelector("[data-plot]");
      const points = done.filter((trial) => trial.params[name] !== undefined);
      if (!spec || !points.length) {
        if (figure.chart) {
          figure.chart.destroy();
          figure.chart = null;
        }
        plot.textContent = this.empty;
        figure.dataset.points = "0";
        return;
      }
      const categorical = spec.type === "categorical";
      const labels = categorical ? spec.choices.map(show) : null;
      const xOf = (value) => (categorical ? spec.choices.indexOf(value) : value);
      const pairs = points
        .map((trial) => [xOf(trial.params[name]), trial.value, trial.best])
        .filter((pair) => pair[0] !== -1)
        .sort((a, b) => a[0] - b[0]);
      const data = [
        pairs.map((p) => p[0]),
        pairs.map((p) => p[1]),
        pairs.map((p) => (p[2] ? p[1] : null)),
      ];
      // The x axis spans the parameter's whole range, so charts of one sweep compare.
      const xScale = { time: false };
      if (categorical) {
        xScale.range = () => [-0.5, labels.length - 0.5];
      } else if (spec.log) {
        xScale.distr = 3;
        xScale.range = () => [spec.low, spec.high];
      } else {
        const pad = (spec.high - spec.low) * 0.03;
        xScale.range = () => [spec.low - pad, spec.high + pad];
      }
      const xAxis = {};
      if (categorical) {
        xAxis.splits = () => labels.map((_label, i) => i);
        xAxis.values = (_u, splits) => splits.map((i) => (labels[i] === undefined ? "" : labels[i]));
      }
      const options = {
        width: Math.max(plot.clientWidth, 240),
        height: HEIGHT,
        scales: { x: xScale },
        legend: { show: true },
        cursor: { drag: { x: true, y: false } },
        series: [
          { label: name, value: (_u, v) => (v === null ? "—" : categorical ? labels[v] : show(v)) },
          {
            label: sweep.metric || "value",
            stroke: POINT,
            fill: POINT,
            paths: () => null,
            points: { show: true, size: 7, stroke: POINT, fill: POINT },
          },
          {
            label: this.bestText,
            stroke: BEST,
            fill: BEST,
            paths: () => null,
            points: { show: true, size: 13, stroke: BEST, fill: BEST },
          },
        ],
        axes: [xAxis, { size: 60 }],
      };
      if (figure.chart) figure.chart.destroy();
      plot.textContent = "";
      figure.chart = new uPlot(options, data, plot);
      figure.dataset.points = String(pairs.length);
    }
  }

  window.addEventListener("resize", () => {
    document.querySelectorAll("[data-scatter]").forEach((figure) => {
      const plot = figure.querySelector("[data-plot]");
      if (figure.chart && plot.clientWidth) {
        figure.chart.setSize({ width: plot.clientWidth, height: HEIGHT });
      }
    });
  });

  function start() {
    if (typeof uPlot === "undefined") return;
    document.querySelectorAll("[data-sweep]").forEach((root) => {
      if (!root.sweepPage) root.sweepPage = new SweepPage(root);
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
