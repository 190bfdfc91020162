/* /dashboard/usage: a date range, credits per model per day as a stacked bar chart (with a
   table of the same data), and the per-model table. */
(function () {
  "use strict";
  var C = window.Conduix;
  var $ = C.$;
  var el = C.el;
  var COLORS = 8; // .s0 … .s7 in the stylesheet; the 8th is "Other" when there are more models

  var state = { today: null, daily: null, wired: false, width: 0 };

  function compareNanosDesc(a, b) {
    var x = C.toNanos(a);
    var y = C.toNanos(b);
    return x === y ? 0 : x > y ? -1 : 1;
  }

  function query(from, to, groupBy) {
    var q = "group_by=" + groupBy;
    if (from) q += "&from=" + encodeURIComponent(from);
    if (to) q += "&to=" + encodeURIComponent(to);
    return C.get("v1/usage?" + q);
  }

  // ------------------------------------------------------------------ per-model table and totals

  function renderModels(report) {
    var totals = report.totals;
    C.setText("total-credits", C.credits(totals.credits));
    C.setText("total-answered", C.integer(Number(totals.requests) + Number(totals.cache_hits)));
    C.setText("total-requests", C.integer(totals.requests));
    C.setText("total-hits", C.integer(totals.cache_hits));
    C.setText("total-saved", C.credits(totals.saved_credits));
    C.setText("totals-range", "(" + C.dateUTC(report.from) + " – " + C.dateUTC(report.to) + ")");

    var rows = (report.data || []).slice().sort(function (a, b) {
      return compareNanosDesc(a.credits, b.credits) || (a.model < b.model ? -1 : 1);
    });
    var table = $("models");
    var body = table.tBodies[0];
    C.clear(body);
    rows.forEach(function (r) {
      body.appendChild(
        el(
          "tr",
          { "data-model": r.model },
          el("th", { scope: "row", text: r.model }),
          el("td", { class: "num", text: C.integer(r.requests) }),
          el("td", { class: "num", text: C.integer(r.cache_hits) }),
          el("td", { class: "num", text: C.integer(r.prompt_tokens) }),
          el("td", { class: "num", text: C.integer(r.completion_tokens) }),
          el("td", { class: "num", text: C.credits(r.credits) }),
          el("td", { class: "num", text: C.credits(r.saved_credits) })
        )
      );
    });
    var foot = table.tFoot;
    C.clear(foot);
    if (rows.length) {
      foot.appendChild(
        el(
          "tr",
          {},
          el("th", { scope: "row", text: "Total" }),
          el("td", { class: "num", text: C.integer(totals.requests) }),
          el("td", { class: "num", text: C.integer(totals.cache_hits) }),
          el("td", { class: "num", text: C.integer(totals.prompt_tokens) }),
          el("td", { class: "num", text: C.integer(totals.completion_tokens) }),
          el("td", { class: "num", text: C.credits(totals.credits) }),
          el("td", { class: "num", text: C.credits(totals.saved_credits) })
        )
      );
    }
    $("models-empty").hidden = rows.length > 0;
  }

  // ------------------------------------------------------------------ chart

  function chartModel(report) {
    var days = [];
    var first = C.parseDay(report.from);
    var last = C.parseDay(report.to);
    for (var d = first; d <= last; d = C.addDays(d, 1)) days.push(C.formatDay(d));

    var byModel = {};
    (report.data || []).forEach(function (r) {
      var m = byModel[r.model] || (byModel[r.model] = { name: r.model, values: {}, total: 0n });
      m.values[r.day] = r.credits;
      m.total += C.toNanos(r.credits);
    });
    var models = Object.keys(byModel)
      .map(function (k) { return byModel[k]; })
      .filter(function (m) { return m.total > 0n; })
      .sort(function (a, b) { return a.total === b.total ? (a.name < b.name ? -1 : 1) : a.total > b.total ? -1 : 1; });
    if (models.length > COLORS) {
      var other = { name: "Other models", values: {}, total: 0n };
      models.slice(COLORS - 1).forEach(function (m) {
        Object.keys(m.values).forEach(function (day) {
          other.values[day] = C.addDecimals([other.values[day] || "0", m.values[day]]);
        });
        other.total += m.total;
      });
      models = models.slice(0, COLORS - 1).concat([other]);
    }
    models.forEach(function (m, i) {
      m.cls = "s" + i;
    });
    return { days: days, series: models };
  }

  function drawChart() {
    var model = state.daily;
    if (!model) return;
    var box = $("chart");
    box.hidden = false; // measured while visible
    state.width = box.clientWidth;
    var drawn = window.ConduixChart.stackedBars(box, {
      days: model.days,
      series: model.series,
      title: "Credits burned per day, by model",
      xTitle: "Day (UTC)",
      yTitle: "Credits",
      unit: "credits",
    });
    var empty = !drawn;
    $("chart-empty").hidden = !empty;
    box.hidden = empty;
    $("chart-legend").hidden = empty;
    $("chart-table-wrap").hidden = empty;
  }

  function renderLegend(model) {
    var legend = $("chart-legend");
    C.clear(legend);
    model.series.forEach(function (s) {
      legend.appendChild(el("li", {}, el("span", { class: "swatch " + s.cls, "aria-hidden": "true" }), el("span", { text: s.name })));
    });
  }

  function renderChartTable(model) {
    var table = $("chart-table");
    var head = table.tHead;
    var body = table.tBodies[0];
    C.clear(head);
    C.clear(body);
    var headRow = el("tr", {}, el("th", { scope: "col", text: "Day (UTC)" }));
    model.series.forEach(function (s) {
      headRow.appendChild(el("th", { scope: "col", class: "num", text: s.name }));
    });
    headRow.appendChild(el("th", { scope: "col", class: "num", text: "Total" }));
    head.appendChild(headRow);
    model.days.forEach(function (day) {
      var values = model.series.map(function (s) { return s.values[day] || "0"; });
      var total = C.addDecimals(values);
      if (total === "0") return; // days without usage are left out
      var row = el("tr", {}, el("th", { scope: "row", text: day }));
      values.forEach(function (v) {
        row.appendChild(el("td", { class: "num", text: C.credits(v) }));
      });
      row.appendChild(el("td", { class: "num", text: C.credits(total) }));
      body.appendChild(row);
    });
  }

  function renderDaily(report) {
    state.daily = chartModel(report);
    renderLegend(state.daily);
    renderChartTable(state.daily);
    drawChart();
  }

  // ------------------------------------------------------------------ range

  function load(from, to) {
    C.clearError("range-error");
    var button = $("range-form").querySelector('button[type="submit"]');
    return C.busy(button, Promise.all([query(from, to, "model,day"), query(from, to, "model")])).then(
      function (reports) {
        var daily = reports[0];
        if (!state.today) state.today = daily.to; // the API's today (UTC), for the quick ranges
        $("range-from").value = daily.from;
        $("range-to").value = daily.to;
        renderModels(reports[1]);
        renderDaily(daily);
      },
      function (err) {
        if (err.status === 401 || err.status === 403) return;
        var field = err.body && err.body.error && err.body.error.param === "from" ? $("range-from") : $("range-to");
        C.showError("range-error", err.message, err.status === 400 ? field : null);
      }
    );
  }

  function onSubmit(event) {
    event.preventDefault();
    var from = $("range-from").value;
    var to = $("range-to").value;
    if (!C.parseDay(from)) return C.showError("range-error", "Choose a start date.", $("range-from"));
    if (!C.parseDay(to)) return C.showError("range-error", "Choose an end date.", $("range-to"));
    if (to < from) return C.showError("range-error", "The end date must not be before the start date.", $("range-to"));
    load(from, to);
  }

  function onPreset(event) {
    var preset = event.currentTarget.getAttribute("data-preset");
    var today = C.parseDay(state.today) || C.parseDay(C.formatDay(new Date()));
    var from =
      preset === "month"
        ? new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), 1))
        : C.addDays(today, -(parseInt(preset, 10) - 1));
    load(C.formatDay(from), C.formatDay(today));
  }

  function onDownload(event) {
    var from = $("range-from").value;
    var to = $("range-to").value;
    C.clearError("range-error");
    var path = "v1/usage?format=csv&group_by=model,day&from=" + encodeURIComponent(from) + "&to=" + encodeURIComponent(to);
    C.busy(event.currentTarget, C.download(path, "usage.csv")).catch(function (err) {
      C.showError("range-error", err.message, null);
    });
  }

  function onResize() {
    window.clearTimeout(state.resizeTimer);
    state.resizeTimer = window.setTimeout(function () {
      if ($("chart").clientWidth !== state.width) drawChart();
    }, 150);
  }

  function onSignedIn() {
    if (!state.wired) {
      state.wired = true;
      $("range-form").addEventListener("submit", onSubmit);
      $("usage-download").addEventListener("click", onDownload);
      document.querySelectorAll("[data-preset]").forEach(function (b) {
        b.addEventListener("click", onPreset);
      });
      window.addEventListener("resize", onResize);
    }
    load(null, null);
  }

  C.start({ public: false, onSignedIn: onSignedIn });
})();
