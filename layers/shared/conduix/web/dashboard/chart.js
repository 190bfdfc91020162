/* A small stacked bar chart in inline SVG: one bar per day, one segment per series.
   Values are exact decimal strings; totals and axis ticks are computed in BigInt nano-credits,
   and only pixel positions use floating point. */
(function () {
  "use strict";
  var C = window.Conduix;
  var SVG = "http://www.w3.org/2000/svg";
  var MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  var uid = 0;

  function node(tag, attrs, text) {
    var n = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) {
      n.setAttribute(k, String(attrs[k]));
    });
    if (text !== undefined) n.textContent = text;
    return n;
  }

  function shortDay(day, withYear) {
    var d = C.parseDay(day);
    if (!d) return day;
    return MONTHS[d.getUTCMonth()] + " " + d.getUTCDate() + (withYear ? " " + d.getUTCFullYear() : "");
  }

  /* A "nice" tick step (1, 2 or 5 times a power of ten nano-credits) giving about `count` ticks. */
  function niceStep(max, count) {
    var rough = (max + BigInt(count) - 1n) / BigInt(count);
    if (rough < 1n) rough = 1n;
    var mag = 10n ** BigInt(rough.toString().length - 1);
    var factors = [1n, 2n, 5n, 10n];
    for (var i = 0; i < factors.length; i++) {
      if (factors[i] * mag >= rough) return factors[i] * mag;
    }
    return 10n * mag;
  }

  /* options: {days: ["2026-11-01", ...], series: [{name, cls, values: {day: "decimal"}}],
               title, xTitle, yTitle, unit} */
  function stackedBars(container, options) {
    C.clear(container);
    var days = options.days;
    var series = options.series;
    var totals = days.map(function (day) {
      return series.reduce(function (sum, s) {
        return sum + (s.values[day] ? C.toNanos(s.values[day]) : 0n);
      }, 0n);
    });
    var max = totals.reduce(function (a, b) {
      return b > a ? b : a;
    }, 0n);
    if (max === 0n) return null;

    var step = niceStep(max, 4);
    var top = ((max + step - 1n) / step) * step;
    var ticks = [];
    for (var t = 0n; t <= top; t += step) ticks.push(t);

    var width = Math.max(320, Math.floor(container.clientWidth || 640));
    var narrow = width < 560;
    var height = narrow ? 260 : 320;
    var labelChars = ticks.reduce(function (m, v) {
      return Math.max(m, C.groupDigits(C.fromNanos(v)).length);
    }, 1);
    var margin = { top: 14, right: 12, bottom: 52, left: Math.min(140, 28 + labelChars * 7) };
    var plotW = width - margin.left - margin.right;
    var plotH = height - margin.top - margin.bottom;
    var topN = Number(top);
    var y = function (nanos) {
      return margin.top + plotH - (Number(nanos) / topN) * plotH;
    };

    uid += 1;
    var titleId = "chart-title-" + uid;
    var descId = "chart-desc-" + uid;
    var svg = node("svg", {
      viewBox: "0 0 " + width + " " + height,
      width: width,
      height: height,
      role: "img",
      "aria-labelledby": titleId,
      "aria-describedby": descId,
      focusable: "false",
    });
    var best = 0;
    totals.forEach(function (v, i) {
      if (v > totals[best]) best = i;
    });
    svg.appendChild(node("title", { id: titleId }, options.title));
    svg.appendChild(
      node(
        "desc",
        { id: descId },
        "Stacked bars, one per day from " + days[0] + " to " + days[days.length - 1] + ", one segment per model (" +
          series.map(function (s) { return s.name; }).join(", ") + "). The highest day is " + days[best] + " with " +
          C.fromNanos(totals[best]) + " " + options.unit + ". The table below the chart has every value."
      )
    );

    // grid lines and y-axis labels
    var grid = node("g", { "aria-hidden": "true" });
    ticks.forEach(function (v) {
      var py = Math.round(y(v)) + 0.5;
      grid.appendChild(node("line", { class: v === 0n ? "axis-line" : "grid-line", x1: margin.left, x2: width - margin.right, y1: py, y2: py }));
      grid.appendChild(node("text", { x: margin.left - 8, y: py + 4, "text-anchor": "end" }, C.groupDigits(C.fromNanos(v))));
    });
    svg.appendChild(grid);

    // bars
    var slot = plotW / days.length;
    var barW = Math.max(1, Math.min(48, slot * 0.72));
    var bars = node("g", {});
    days.forEach(function (day, i) {
      var x = margin.left + i * slot + (slot - barW) / 2;
      var base = 0n;
      series.forEach(function (s) {
        var value = s.values[day];
        if (!value) return;
        var nanos = C.toNanos(value);
        if (nanos === 0n) return;
        var y0 = y(base);
        var y1 = y(base + nanos);
        base += nanos;
        var rect = node("rect", {
          class: "seg " + s.cls,
          x: x.toFixed(2),
          y: y1.toFixed(2),
          width: barW.toFixed(2),
          height: Math.max(0.5, y0 - y1).toFixed(2),
          "data-day": day,
          "data-model": s.name,
          "data-credits": value,
        });
        rect.appendChild(node("title", {}, shortDay(day, true) + " · " + s.name + ": " + C.groupDigits(value) + " " + options.unit));
        bars.appendChild(rect);
      });
    });
    svg.appendChild(bars);

    // x-axis labels: as many as fit
    var every = Math.max(1, Math.ceil(days.length / Math.max(1, Math.floor(plotW / (narrow ? 52 : 60)))));
    var multiYear = days[0].slice(0, 4) !== days[days.length - 1].slice(0, 4);
    var xLabels = node("g", { "aria-hidden": "true" });
    days.forEach(function (day, i) {
      if (i % every !== 0) return;
      var cx = margin.left + i * slot + slot / 2;
      xLabels.appendChild(node("text", { x: cx.toFixed(1), y: margin.top + plotH + 18, "text-anchor": "middle" }, shortDay(day, multiYear && i === 0)));
    });
    svg.appendChild(xLabels);

    // axis titles
    svg.appendChild(node("text", { class: "axis-title", x: margin.left + plotW / 2, y: height - 8, "text-anchor": "middle", "aria-hidden": "true" }, options.xTitle));
    svg.appendChild(
      node(
        "text",
        { class: "axis-title", x: 0, y: 0, "text-anchor": "middle", transform: "translate(14 " + (margin.top + plotH / 2) + ") rotate(-90)", "aria-hidden": "true" },
        options.yTitle
      )
    );

    container.appendChild(svg);
    return { max: C.fromNanos(max), top: C.fromNanos(top), totals: totals.map(C.fromNanos) };
  }

  window.ConduixChart = { stackedBars: stackedBars, niceStep: niceStep };
})();
