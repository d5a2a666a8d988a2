/* lanalyze console: charts (hand-written SVG), sortable tables, CSV/SVG/PNG export,
 * range picker and auto-refresh. No framework and no build step: the page is rendered on the
 * server and works without this file; this adds the interactive parts. Loaded with `defer`
 * from our own origin (the Content-Security-Policy forbids inline script). */
"use strict";

(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";
  // Colour-blind-friendly palette (Okabe-Ito and Tableau-like), "other" is grey.
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#4e79a7", "#f28e2b", "#59a14f"];
  const OTHER = "#a0a7b1";

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG_NS, name);
    for (const key in attrs) node.setAttribute(key, attrs[key]);
    if (parent) parent.appendChild(node);
    return node;
  }

  function human(value, unit) {
    const units = ["", "k", "M", "G", "T", "P"];
    let n = Math.abs(value), i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    const text = n === 0 ? "0" : (n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2));
    return (value < 0 ? "-" : "") + text + " " + units[i] + (unit || "");
  }

  function niceMax(value, integer) {
    if (value <= 0) return integer ? 4 : 1;
    if (integer && value <= 4) return 4;
    const exp = Math.pow(10, Math.floor(Math.log10(value)));
    for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * exp >= value) return m * exp;
    return 10 * exp;
  }

  function two(n) { return (n < 10 ? "0" : "") + n; }
  function timeLabel(ms, span) {
    const d = new Date(ms);
    const hm = two(d.getUTCHours()) + ":" + two(d.getUTCMinutes());
    if (span <= 86400000 * 1.5) return hm;
    return (d.getUTCMonth() + 1) + "/" + d.getUTCDate() + (span <= 86400000 * 8 ? " " + hm : "");
  }
  function fullTime(ms) {
    const d = new Date(ms);
    return d.getUTCFullYear() + "-" + two(d.getUTCMonth() + 1) + "-" + two(d.getUTCDate()) +
      " " + two(d.getUTCHours()) + ":" + two(d.getUTCMinutes()) + " UTC";
  }

  /* A stacked area chart (or lines when data.stacked is false). data = {times: [ms],
   * bucket_ms, unit, series: [{name, values, other?}]} */
  function drawChart(figure) {
    const source = document.getElementById(figure.dataset.source);
    const plot = figure.querySelector(".plot");
    if (!source || !plot) return;
    const data = JSON.parse(source.textContent);
    plot.textContent = "";
    const W = 900, H = 260, L = 64, R = 12, T = 10, B = 26;
    const svg = el("svg", { viewBox: "0 0 " + W + " " + H, role: "img",
      "aria-label": figure.dataset.label || "chart", xmlns: SVG_NS,
      "font-family": "DejaVu Sans, sans-serif", "font-size": "11" }, plot);
    el("rect", { x: 0, y: 0, width: W, height: H, fill: "#ffffff" }, svg);
    const times = data.times || [];
    const series = data.series || [];
    if (!times.length || !series.length) {
      const t = el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#4f5b6d" }, svg);
      t.textContent = "No flows in this range";
      figure.querySelector(".legend") && (figure.querySelector(".legend").textContent = "");
      return;
    }
    const stacked = data.stacked !== false;
    const n = times.length;
    const tops = new Array(n).fill(0);
    const layers = series.map(function (s) {
      const base = tops.slice();
      const top = s.values.map(function (v, i) { return stacked ? (tops[i] += (v || 0)) : (v || 0); });
      return { name: s.name, base: stacked ? base : new Array(n).fill(0), top: top, other: s.other, colour: s.colour };
    });
    let peak = 0;
    for (const layer of layers) for (const v of layer.top) peak = Math.max(peak, v);
    const ymax = niceMax(peak, data.integer);
    const t0 = Math.min(data.since || times[0], times[0]);
    const t1 = Math.max(data.until || 0, times[n - 1] + (data.bucket_ms || 0));
    const span = Math.max(1, t1 - t0);
    const x = function (t) { return L + (W - L - R) * (t - t0) / span; };
    const y = function (v) { return T + (H - T - B) * (1 - v / ymax); };
    const bw = data.bucket_ms || (n > 1 ? times[1] - times[0] : 60000);
    // Grid and axes.
    for (let i = 0; i <= 4; i++) {
      const v = ymax * i / 4, yy = y(v);
      el("line", { x1: L, x2: W - R, y1: yy, y2: yy, stroke: i ? "#e6eaf0" : "#8a96a8", "stroke-width": 1 }, svg);
      const label = el("text", { x: L - 6, y: yy + 4, "text-anchor": "end", fill: "#4f5b6d" }, svg);
      label.textContent = data.integer ? String(Math.round(v)) : human(v, data.unit || "");
    }
    const ticks = 6;
    for (let i = 0; i <= ticks; i++) {
      const t = t0 + span * i / ticks;
      const label = el("text", { x: x(t), y: H - 8, "text-anchor": i === 0 ? "start" : i === ticks ? "end" : "middle", fill: "#4f5b6d" }, svg);
      label.textContent = timeLabel(t, span);
    }
    // Areas, drawn as steps per bucket (each bucket's mean rate).
    layers.forEach(function (layer, index) {
      const colour = layer.colour || (layer.other ? OTHER : PALETTE[index % PALETTE.length]);
      let d = "";
      for (let i = 0; i < n; i++) {
        const xa = x(times[i]), xb = x(times[i] + bw);
        d += (i ? "L" : "M") + xa.toFixed(1) + "," + y(layer.top[i]).toFixed(1) + "L" + xb.toFixed(1) + "," + y(layer.top[i]).toFixed(1);
      }
      for (let i = n - 1; i >= 0; i--) {
        const xa = x(times[i]), xb = x(times[i] + bw);
        d += "L" + xb.toFixed(1) + "," + y(layer.base[i]).toFixed(1) + "L" + xa.toFixed(1) + "," + y(layer.base[i]).toFixed(1);
      }
      el("path", { d: d + "Z", fill: colour, "fill-opacity": stacked ? 0.85 : 0.25, stroke: colour, "stroke-width": 0.8 }, svg);
      layer.colour = colour;
    });
    // Legend (HTML, outside the SVG, plus a copy inside for export).
    const legend = figure.querySelector(".legend");
    if (legend) {
      legend.textContent = "";
      layers.forEach(function (layer) {
        const item = document.createElement("span");
        const sw = document.createElement("span");
        sw.className = "swatch";
        sw.style.background = layer.colour;  // CSSOM, not an inline style attribute: CSP-safe
        item.appendChild(sw);
        item.appendChild(document.createTextNode(layer.name));
        legend.appendChild(item);
      });
    }
    // Hover / keyboard read-out.
    const tip = document.createElement("div");
    tip.className = "tip"; tip.hidden = true; tip.setAttribute("role", "status");
    plot.appendChild(tip);
    const cursor = el("line", { x1: 0, x2: 0, y1: T, y2: H - B, stroke: "#14263f", "stroke-width": 1, visibility: "hidden" }, svg);
    let current = -1;
    function show(i) {
      if (i < 0 || i >= n) return;
      current = i;
      const xx = x(times[i] + bw / 2);
      cursor.setAttribute("x1", xx); cursor.setAttribute("x2", xx); cursor.setAttribute("visibility", "visible");
      tip.textContent = "";
      const head = document.createElement("div");
      head.textContent = fullTime(times[i]);
      tip.appendChild(head);
      let total = 0;
      for (let k = layers.length - 1; k >= 0; k--) {
        const v = series[k].values[i] || 0; total += v;
        const row = document.createElement("div");
        row.textContent = layers[k].name + ": " + human(v, data.unit || "");
        tip.appendChild(row);
      }
      if (stacked && layers.length > 1) {
        const row = document.createElement("div");
        row.textContent = "total: " + human(total, data.unit || "");
        tip.appendChild(row);
      }
      tip.hidden = false;
      const box = plot.getBoundingClientRect();
      const px = xx / W * box.width;
      tip.style.left = (px > box.width / 2 ? px - tip.offsetWidth - 10 : px + 10) + "px";
      tip.style.top = "8px";
    }
    function hide() { tip.hidden = true; cursor.setAttribute("visibility", "hidden"); }
    plot.addEventListener("mousemove", function (ev) {
      const box = svg.getBoundingClientRect();
      const t = t0 + (ev.clientX - box.left) / box.width * W;
      const sx = (ev.clientX - box.left) / box.width * W;
      const tt = t0 + (sx - L) / (W - L - R) * span;
      let i = Math.floor((tt - t0) / bw);
      if (t < 0) i = -1;
      show(Math.min(n - 1, Math.max(0, i)));
    });
    plot.addEventListener("mouseleave", hide);
    plot.tabIndex = 0;
    plot.setAttribute("aria-label", (figure.dataset.label || "chart") + ": use the arrow keys to read values");
    plot.addEventListener("keydown", function (ev) {
      if (ev.key === "ArrowRight") { show(Math.min(n - 1, current + 1)); ev.preventDefault(); }
      else if (ev.key === "ArrowLeft") { show(Math.max(0, current < 0 ? n - 1 : current - 1)); ev.preventDefault(); }
      else if (ev.key === "Escape") hide();
    });
    plot.addEventListener("blur", hide);
    figure._legendLayers = layers;
  }

  /* The chart as a standalone SVG document, legend included, for download. */
  function chartSvgText(figure) {
    const svg = figure.querySelector("svg");
    if (!svg) return null;
    const copy = svg.cloneNode(true);
    const layers = figure._legendLayers || [];
    const rows = Math.ceil(layers.length / 4);
    const vb = svg.getAttribute("viewBox").split(" ").map(Number);
    const extra = rows * 18 + 24;
    copy.setAttribute("viewBox", "0 0 " + vb[2] + " " + (vb[3] + extra));
    copy.setAttribute("width", vb[2]);
    copy.setAttribute("height", vb[3] + extra);
    el("rect", { x: 0, y: vb[3], width: vb[2], height: extra, fill: "#ffffff" }, copy);
    const title = el("text", { x: 8, y: vb[3] + 14, "font-weight": "bold", fill: "#1a2230" }, copy);
    title.textContent = figure.dataset.label || "";
    layers.forEach(function (layer, i) {
      const col = i % 4, row = Math.floor(i / 4);
      const gx = 8 + col * (vb[2] / 4), gy = vb[3] + 22 + row * 18;
      el("rect", { x: gx, y: gy, width: 10, height: 10, fill: layer.colour }, copy);
      const t = el("text", { x: gx + 14, y: gy + 9, fill: "#1a2230" }, copy);
      t.textContent = layer.name;
    });
    copy.querySelectorAll("line[visibility]").forEach(function (n) { n.remove(); });
    return { text: new XMLSerializer().serializeToString(copy), width: vb[2], height: vb[3] + extra };
  }

  function download(name, blob) {
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url; a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 5000);
  }

  function exportChart(figure, format) {
    const out = chartSvgText(figure);
    if (!out) return;
    const base = (figure.dataset.name || "chart");
    const svgBlob = new Blob([out.text], { type: "image/svg+xml" });
    if (format === "svg") { download(base + ".svg", svgBlob); return; }
    const img = new Image();
    const url = URL.createObjectURL(svgBlob);
    img.onload = function () {
      const scale = 2;
      const canvas = document.createElement("canvas");
      canvas.width = out.width * scale; canvas.height = out.height * scale;
      const ctx = canvas.getContext("2d");
      ctx.fillStyle = "#ffffff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
      URL.revokeObjectURL(url);
      canvas.toBlob(function (png) { if (png) download(base + ".png", png); }, "image/png");
    };
    img.src = url;
  }

  /* Tables: sort by a column (numbers by data-value), export as CSV. */
  function cellValue(cell) {
    if (cell.dataset.value !== undefined) {
      const n = Number(cell.dataset.value);
      return isNaN(n) ? cell.dataset.value : n;
    }
    return cell.textContent.trim();
  }

  function sortTable(table, index, header) {
    const body = table.tBodies[0];
    if (!body) return;
    const descending = header.getAttribute("aria-sort") !== "descending";
    table.querySelectorAll("th[aria-sort]").forEach(function (th) { th.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", descending ? "descending" : "ascending");
    const rows = Array.from(body.rows);
    rows.sort(function (a, b) {
      const x = cellValue(a.cells[index]), y = cellValue(b.cells[index]);
      const c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
      return descending ? -c : c;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }

  function csvField(text) {
    return /[",\n\r]/.test(text) || /^[=+\-@]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  function tableCsv(table) {
    const lines = [];
    const heads = Array.from(table.tHead ? table.tHead.rows[0].cells : []);
    const skip = heads.map(function (th) { return th.dataset.csv === "skip"; });
    lines.push(heads.filter(function (_, i) { return !skip[i]; }).map(function (th) {
      return csvField(th.dataset.csvName || th.textContent.trim());
    }).join(","));
    Array.from(table.tBodies[0] ? table.tBodies[0].rows : []).forEach(function (row) {
      lines.push(Array.from(row.cells).filter(function (_, i) { return !skip[i]; }).map(function (cell) {
        const raw = cell.dataset.csv !== undefined ? cell.dataset.csv : (cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim());
        return csvField(String(raw));
      }).join(","));
    });
    return lines.join("\r\n") + "\r\n";
  }

  function enhance(root) {
    root.querySelectorAll("figure.chart").forEach(drawChart);
    root.querySelectorAll("table.data").forEach(function (table) {
      Array.from(table.tHead ? table.tHead.rows[0].cells : []).forEach(function (th, index) {
        if (th.dataset.sortable === undefined) return;
        const button = document.createElement("button");
        button.type = "button"; button.className = "sort";
        button.textContent = th.textContent.trim();
        button.setAttribute("aria-label", "Sort by " + th.textContent.trim());
        th.textContent = ""; th.appendChild(button);
        button.addEventListener("click", function () { sortTable(table, index, th); });
      });
    });
    root.querySelectorAll("button[data-export-table]").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () {
        const table = document.getElementById(button.dataset.exportTable);
        if (table) download(button.dataset.exportTable + ".csv", new Blob([tableCsv(table)], { type: "text/csv" }));
      });
    });
    root.querySelectorAll("button[data-export-chart]").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () {
        const figure = document.getElementById(button.dataset.exportChart);
        if (figure) exportChart(figure, button.dataset.format);
      });
    });
    root.querySelectorAll("form.controls").forEach(setupControls);
    root.querySelectorAll("section[data-panel]").forEach(loadPanel);
  }

  /* A table the server deferred (answered from raw flows): fetch it and put it in place. */
  function loadPanel(section) {
    const url = section.dataset.panel;
    section.removeAttribute("data-panel");
    fetch(url, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        const doc = new DOMParser().parseFromString(html, "text/html");
        const fresh = doc.getElementById(section.id);
        if (!fresh) return;
        const node = document.adoptNode(fresh);
        section.replaceWith(node);
        enhance(node);
      })
      .catch(function () {
        const p = section.querySelector("p");
        if (p) p.textContent = "This table could not be loaded; reload the page to try again.";
        section.removeAttribute("aria-busy");
      });
  }

  function setupControls(form) {
    const range = form.querySelector("select[name=range]");
    const custom = form.querySelector(".custom-range");
    if (range && custom) {
      const sync = function () { custom.hidden = range.value !== "custom"; };
      range.addEventListener("change", function () {
        sync();
        if (range.value !== "custom") form.requestSubmit();
      });
      sync();
    }
    const refresh = form.querySelector("select[name=refresh]");
    if (refresh) refresh.addEventListener("change", function () { form.requestSubmit(); });
    const order = form.querySelector("select[name=order]");
    if (order) order.addEventListener("change", function () { form.requestSubmit(); });
  }

  /* Auto-refresh: fetch the same URL, swap the #content region, keep focus and scroll. */
  let timer = null;
  function scheduleRefresh() {
    const content = document.getElementById("content");
    if (timer) clearTimeout(timer);
    if (!content || !content.dataset.refresh) return;
    const seconds = Number(content.dataset.refresh);
    if (!(seconds > 0)) return;
    timer = setTimeout(function () {
      fetch(window.location.href, { credentials: "same-origin", headers: { "X-Requested-With": "refresh" } })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) {
          const doc = new DOMParser().parseFromString(html, "text/html");
          const fresh = doc.getElementById("content");
          const now = document.getElementById("content");
          if (fresh && now) {
            now.replaceWith(document.adoptNode(fresh));
            enhance(fresh);
          }
          scheduleRefresh();
        })
        .catch(function () { scheduleRefresh(); });
    }, seconds * 1000);
  }

  document.addEventListener("DOMContentLoaded", function () {
    enhance(document);
    // Charts drawn, tables sortable: the page is interactive (read by bench/console_bench.py).
    if (window.performance && performance.mark) performance.mark("lanalyze-interactive");
    scheduleRefresh();
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (ev) {
        if (!window.confirm(form.dataset.confirm)) ev.preventDefault();
      });
    });
  });

  window.lanalyze = { tableCsv: tableCsv, chartSvgText: chartSvgText, human: human };
})();
