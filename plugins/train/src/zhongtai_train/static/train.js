// The train plugin's pages: metric charts of a run (kept up to date while it runs),
// overlaid curves of compared runs, and the run picker of an experiment's page.
//
// Points come from GET /api/v1/train/runs/{id}/metrics/{key}?max_points=N, which the
// server downsamples (the curve's shape, first and last point, minimum and maximum
// kept), so a run of millions of points costs the page a few thousand. Every text that
// came from a user (run names, metric keys) goes into the page as textContent.
"use strict";

(function () {
  const LIVE = new Set(["RUNNING", "SCHEDULED"]);
  const HEIGHT = 200;
  const PALETTE = [
    "#2454d6", "#b3261e", "#1b7f3b", "#9a6700", "#7b1fa2",
    "#00838f", "#c2185b", "#5d4037", "#546e7a", "#ef6c00",
  ];

  function colour(i) {
    if (i < PALETTE.length) return PALETTE[i];
    return `hsl(${Math.round((i * 137.5) % 360)}, 60%, 42%)`;
  }

  // One path segment per "/" of the key: the route takes the key as a path.
  function seriesUrl(base, key, maxPoints) {
    const path = key.split("/").map(encodeURIComponent).join("/");
    return `${base}${path}?max_points=${maxPoints}`;
  }

  function pointsFor(element) {
    // About two points per pixel: more would not show, fewer would lose detail.
    return Math.min(2000, Math.max(300, Math.round(element.clientWidth * 2)));
  }

  async function getJSON(url) {
    const answer = await fetch(url, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      cache: "no-store",
    });
    if (!answer.ok) throw new Error(`${answer.status} ${answer.statusText}`);
    return answer.json();
  }

  function formatValue(value) {
    if (value === null || value === undefined) return "—";
    return String(parseFloat(Number(value).toPrecision(6)));
  }

  function when(text) {
    return text ? `${text.slice(0, 19).replace("T", " ")} UTC` : "—";
  }

  // h:mm:ss between two ISO times, as the page shows a duration.
  function duration(started, ended) {
    if (!started || !ended) return null;
    const seconds = Math.max(0, Math.floor((Date.parse(ended) - Date.parse(started)) / 1000));
    if (Number.isNaN(seconds)) return null;
    const pad = (n) => String(n).padStart(2, "0");
    const hours = Math.floor(seconds / 3600);
    return `${hours}:${pad(Math.floor((seconds % 3600) / 60))}:${pad(seconds % 60)}`;
  }

  function options(width, series, xLabel) {
    return {
      width,
      height: HEIGHT,
      scales: { x: { time: false } },
      legend: { show: true },
      cursor: { drag: { x: true, y: false } },
      series: [{ label: xLabel || "step" }].concat(series),
      axes: [{}, { size: 60 }],
    };
  }

  function showEmpty(figure, text) {
    const plot = figure.querySelector("[data-plot]");
    if (figure.chart) {
      figure.chart.destroy();
      figure.chart = null;
    }
    plot.textContent = text;
    figure.dataset.points = "0";
    figure.dataset.total = "0";
  }

  // Draw (or redraw) a chart in figure's [data-plot] with aligned data [x, y1, y2…].
  function draw(figure, data, series, xLabel) {
    const plot = figure.querySelector("[data-plot]");
    if (figure.chart && figure.chart.series.length === series.length + 1) {
      figure.chart.setData(data);
      return;
    }
    if (figure.chart) figure.chart.destroy();
    plot.textContent = "";
    const width = Math.max(plot.clientWidth, 240);
    figure.chart = new uPlot(options(width, series, xLabel), data, plot);
  }

  window.addEventListener("resize", () => {
    document.querySelectorAll("[data-metric-chart], [data-compare-chart]").forEach((figure) => {
      const plot = figure.querySelector("[data-plot]");
      if (figure.chart && plot.clientWidth) {
        figure.chart.setSize({ width: plot.clientWidth, height: HEIGHT });
      }
    });
  });

  // -- a run's page ------------------------------------------------------------------

  class RunPage {
    constructor(root) {
      this.root = root;
      this.interval = Math.max(0.5, Number(root.dataset.interval) || 3) * 1000;
      this.seriesBase = root.dataset.seriesUrl;
      this.empty = root.dataset.emptyText || "";
      this.figures = new Map();
      root.querySelectorAll("[data-metric-chart]").forEach((figure) => {
        this.figures.set(figure.dataset.key, figure);
      });
      this.refreshAll().finally(() => {
        if (root.dataset.runLive === "true") this.schedule();
      });
    }

    schedule() {
      this.timer = window.setTimeout(() => this.tick(), this.interval);
    }

    async tick() {
      if (document.hidden) {
        this.schedule();
        return;
      }
      let run = null;
      try {
        run = await getJSON(this.root.dataset.runUrl);
      } catch (error) {
        this.root.dataset.error = String(error); // a blip: try again at the next tick
      }
      if (run) {
        this.addFigures(Object.keys(run.metrics).sort());
        await this.refreshAll();
        this.updateLatest(run.metrics);
        this.updateStatus(run);
        if (!LIVE.has(run.status)) {
          this.root.dataset.runLive = "false";
          return;
        }
      }
      this.schedule();
    }

    async refreshAll() {
      await Promise.all([...this.figures.values()].map((figure) => this.refresh(figure)));
      this.root.dataset.refreshed = String(Number(this.root.dataset.refreshed || 0) + 1);
    }

    async refresh(figure) {
      const plot = figure.querySelector("[data-plot]");
      let answer;
      try {
        answer = await getJSON(seriesUrl(this.seriesBase, figure.dataset.key, pointsFor(plot)));
      } catch (error) {
        figure.dataset.state = "error";
        if (!figure.chart) plot.textContent = String(error);
        return;
      }
      figure.dataset.state = "ok";
      if (!answer.points) {
        showEmpty(figure, this.empty);
        return;
      }
      draw(figure, [answer.steps, answer.values], [
        { label: figure.dataset.key, stroke: colour(0), width: 1.5, spanGaps: true },
      ]);
      figure.dataset.points = String(answer.points);
      figure.dataset.total = String(answer.total);
    }

    addFigures(keys) {
      for (const key of keys) {
        if (this.figures.has(key)) continue;
        const system = key.startsWith("system/");
        const group = this.root.querySelector(
          `[data-chart-group="${system ? "system" : "metrics"}"]`,
        );
        const figure = document.createElement("figure");
        figure.className = "metric-chart";
        figure.dataset.metricChart = "";
        figure.dataset.key = key;
        const caption = document.createElement("figcaption");
        caption.textContent = system ? key.slice("system/".length) : key;
        const plot = document.createElement("div");
        plot.className = "plot";
        plot.dataset.plot = "";
        plot.setAttribute("role", "img");
        plot.setAttribute("aria-label", key);
        figure.append(caption, plot);
        group.append(figure);
        this.figures.set(key, figure);
        const note = this.root.querySelector(system ? "[data-no-system]" : "[data-no-metrics]");
        if (note) note.hidden = true;
      }
    }

    updateLatest(metrics) {
      const body = this.root.querySelector("[data-latest-metrics] tbody");
      if (!body) return;
      const rows = new Map();
      body.querySelectorAll("tr[data-latest]").forEach((row) => rows.set(row.dataset.latest, row));
      for (const key of Object.keys(metrics).sort()) {
        let row = rows.get(key);
        if (!row) {
          row = document.createElement("tr");
          row.dataset.latest = key;
          const name = document.createElement("td");
          name.textContent = key;
          const value = document.createElement("td");
          value.className = "num";
          value.dataset.value = "";
          const step = document.createElement("td");
          step.className = "num";
          step.dataset.step = "";
          row.append(name, value, step);
          body.append(row);
        }
        row.querySelector("[data-value]").textContent = formatValue(metrics[key].value);
        row.querySelector("[data-step]").textContent = String(metrics[key].step);
      }
    }

    updateStatus(run) {
      this.root.dataset.status = run.status;
      const badge = this.root.querySelector("[data-run-status]");
      if (badge) {
        const classes = JSON.parse(badge.dataset.badges || "{}");
        const labels = JSON.parse(badge.dataset.labels || "{}");
        badge.className = `badge badge-${classes[run.status] || "other"}`;
        badge.textContent = labels[run.status] || run.status;
        badge.dataset.status = run.status;
      }
      const ended = this.root.querySelector("[data-run-ended]");
      if (ended) ended.textContent = when(run.ended_at);
      const took = this.root.querySelector("[data-run-duration]");
      const text = duration(run.started_at, run.ended_at);
      if (took && text) took.textContent = text;
    }
  }

  // -- the comparison ----------------------------------------------------------------

  // Run work(item) for every item, at most `limit` at a time; results in order.
  async function mapLimit(items, limit, work) {
    const results = new Array(items.length);
    let next = 0;
    async function worker() {
      while (next < items.length) {
        const index = next;
        next += 1;
        results[index] = await work(items[index], index);
      }
    }
    await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
    return results;
  }

  class ComparePage {
    constructor(root) {
      this.root = root;
      this.runs = JSON.parse(root.dataset.runs || "[]");
      this.base = root.dataset.seriesBase;
      this.empty = root.dataset.emptyText || "";
      document.querySelectorAll("[data-swatch]").forEach((swatch) => {
        swatch.style.background = colour(Number(swatch.dataset.swatch));
      });
      this.drawGroup(root.querySelector('[data-chart-group="metrics"]'));
      const details = root.querySelector("[data-system-charts]");
      if (details) {
        details.addEventListener("toggle", () => {
          if (details.open) this.drawGroup(details);
        });
      }
    }

    async drawGroup(group) {
      if (!group) return;
      const figures = [...group.querySelectorAll("[data-compare-chart]")].filter(
        (figure) => !figure.dataset.state,
      );
      // One chart after another, the runs of each in parallel (six at a time).
      for (const figure of figures) await this.drawOne(figure);
    }

    async drawOne(figure) {
      figure.dataset.state = "loading";
      const plot = figure.querySelector("[data-plot]");
      const maxPoints = Math.min(1000, pointsFor(plot));
      const answers = await mapLimit(this.runs, 6, (run) =>
        getJSON(seriesUrl(`${this.base}${run.id}/metrics/`, figure.dataset.key, maxPoints)).catch(
          () => null,
        ),
      );
      const tables = [];
      const series = [];
      let points = 0;
      answers.forEach((answer, i) => {
        if (!answer || !answer.points) return;
        tables.push([answer.steps, answer.values]);
        series.push({ label: this.runs[i].name, stroke: colour(i), width: 1.5, spanGaps: true });
        points += answer.points;
      });
      figure.dataset.state = "ok";
      if (!tables.length) {
        showEmpty(figure, this.empty);
        return;
      }
      draw(figure, uPlot.join(tables), series);
      figure.dataset.points = String(points);
      figure.dataset.series = String(series.length);
    }
  }

  // -- the run picker of an experiment's page ----------------------------------------

  function picker(form) {
    const most = Number(form.dataset.max) || 20;
    const boxes = [...form.querySelectorAll("[data-pick]")];
    const button = form.querySelector("[data-compare]");
    const state = form.querySelector("[data-picked]");
    function update() {
      const picked = boxes.filter((box) => box.checked).length;
      boxes.forEach((box) => {
        box.disabled = !box.checked && picked >= most;
      });
      if (button) button.disabled = picked === 0;
      if (state) state.textContent = (state.dataset.template || "{n}").replace("{n}", picked);
      form.dataset.picked = String(picked);
    }
    form.addEventListener("change", update);
    update();
  }

  function start() {
    document.querySelectorAll("[data-compare-form]").forEach((form) => {
      if (!form.picker) form.picker = picker(form) || true;
    });
    if (typeof uPlot === "undefined") return;
    document.querySelectorAll("[data-run-live]").forEach((root) => {
      if (!root.runPage) root.runPage = new RunPage(root);
    });
    document.querySelectorAll("[data-compare-charts]").forEach((root) => {
      if (!root.comparePage) root.comparePage = new ComparePage(root);
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
  // A training job's page swaps its run section in once the job has created the run.
  document.addEventListener("htmx:afterSettle", start);
})();
