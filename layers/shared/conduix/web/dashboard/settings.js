/* /dashboard/settings: the monthly spend cap, alerts and the org's API keys. */
(function () {
  "use strict";
  var C = window.Conduix;
  var $ = C.$;
  var el = C.el;

  var state = { wired: false, revoking: null, limiting: null };

  // ------------------------------------------------------------------ spend cap

  function renderCap(b) {
    var cap = b.spend_cap;
    C.setText("cap-limit", cap ? C.credits(cap.monthly_limit) + " credits" : "No cap");
    C.setText("cap-used", cap ? C.credits(cap.used) + " credits" : C.credits(b.month && b.month.spent) + " credits");
    C.setText("cap-remaining", cap ? C.credits(cap.remaining) + " credits" : "Unlimited");
    C.setText("cap-period", "(" + ((cap && cap.period) || (b.month && b.month.period) || "") + ", UTC)");
    $("cap-remove").hidden = !cap;
  }

  function saveCap(limit, button) {
    C.clearError("cap-error");
    return C.busy(button, C.put("v1/billing/spend-cap", { monthly_limit: limit })).then(
      function (b) {
        renderCap(b);
        $("cap-input").value = "";
        C.showNotice(
          "success",
          b.spend_cap ? "Monthly spend cap set to " + C.credits(b.spend_cap.monthly_limit) + " credits." : "The monthly spend cap is removed."
        );
      },
      function (err) {
        C.showError("cap-error", err.message, C.inputForParam($("cap-form"), err) || $("cap-input"));
      }
    );
  }

  function onCapSubmit(event) {
    event.preventDefault();
    C.clearError("cap-error");
    var value = $("cap-input").value.trim();
    if (!value) return C.showError("cap-error", "Enter a monthly cap in credits, such as 100.", $("cap-input"));
    if (!C.isDecimal(value))
      return C.showError("cap-error", "The cap must be a number of credits, such as 100 or 250.50.", $("cap-input"));
    saveCap(value, $("cap-save"));
  }

  // ------------------------------------------------------------------ alerts

  function splitList(text) {
    return text.split(",").map(function (s) { return s.trim(); }).filter(function (s) { return s !== ""; });
  }

  // The first load must not undo what the user typed while it was on its way.
  var alertsEdited = false;

  function renderAlerts(a) {
    if (!alertsEdited) {
      $("alerts-balance").value = (a.balance_below || []).join(", ");
      $("alerts-cap").value = (a.cap_used_percent || []).join(", ");
    }
    var fired = (a.fired || []).map(function (f) {
      return f.kind === "balance_below" ? "below " + C.credits(f.threshold) + " credits" : f.threshold + "% of the cap";
    });
    C.setText("alerts-fired", fired.length ? "Sent, waiting to re-arm: " + fired.join("; ") + "." : "");
  }

  function onAlertsSubmit(event) {
    event.preventDefault();
    C.clearError("alerts-error");
    var balances = splitList($("alerts-balance").value);
    var percents = splitList($("alerts-cap").value);
    if (!balances.every(C.isDecimal))
      return C.showError("alerts-error", "Balance alerts are amounts of credits, such as 20 or 5.5.", $("alerts-balance"));
    if (!percents.every(function (p) { return /^[0-9]{1,3}$/.test(p); }))
      return C.showError("alerts-error", "Cap alerts are whole percents, such as 80.", $("alerts-cap"));
    var body = { balance_below: balances, cap_used_percent: percents.map(Number) };
    C.busy($("alerts-save"), C.put("v1/billing/alerts", body)).then(
      function (a) {
        alertsEdited = false; // what was saved is what the page shows
        renderAlerts(a);
        C.showNotice("success", "Alerts saved.");
      },
      function (err) {
        var field = err.body && err.body.error && err.body.error.param === "cap_used_percent" ? "alerts-cap" : "alerts-balance";
        C.showError("alerts-error", err.message, $(field));
      }
    );
  }

  // ------------------------------------------------------------------ API keys

  function loadKeys() {
    return C.get("v1/billing/api-keys").then(function (list) {
      var rows = ((list && list.data) || []).slice().sort(function (a, b) {
        if (a.revoked !== b.revoked) return a.revoked ? 1 : -1;
        return a.created_at < b.created_at ? 1 : -1;
      });
      var body = $("keys").tBodies[0];
      C.clear(body);
      rows.forEach(function (k) {
        var action = el("td", { class: "action" });
        if (!k.revoked) {
          var limitButton = el("button", { type: "button", class: "button subtle", "aria-label": "Spend limit of key " + k.name + " (" + k.key_id + ")", text: "Limit" });
          limitButton.addEventListener("click", function () {
            askLimit(k, limitButton);
          });
          action.appendChild(limitButton);
          var button = el("button", { type: "button", class: "button subtle", "aria-label": "Revoke key " + k.name + " (" + k.key_id + ")", text: "Revoke" });
          button.addEventListener("click", function () {
            askRevoke(k, button);
          });
          action.appendChild(button);
        }
        body.appendChild(
          el(
            "tr",
            { "data-key": k.key_id, class: k.revoked ? "revoked" : null },
            el("th", { scope: "row", text: k.name }),
            el("td", {}, el("code", { text: k.key_id })),
            el("td", { text: (k.scopes || []).join(", ") }),
            el("td", {}, el("time", { datetime: k.created_at, text: C.dateTimeUTC(k.created_at) })),
            el("td", {}, el("span", { class: "badge " + (k.revoked ? "bad" : "ok"), text: k.revoked ? "Revoked" : "Active" })),
            el("td", { class: "limit", text: limitText(k.spend_limit) }),
            action
          )
        );
      });
      $("keys-empty").hidden = rows.length > 0;
    });
  }

  var PER = { day: "a day", week: "a week", month: "a month", total: "in total" };

  function limitText(l) {
    if (!l) return "None";
    var text = C.credits(l.amount) + " " + PER[l.period] + " · spent " + C.credits(l.spent);
    if (l.in_flight !== "0") text += " + " + C.credits(l.in_flight) + " in flight";
    if (l.resets_at) text += " · resets " + C.dateTimeUTC(l.resets_at);
    return text;
  }

  function askLimit(key, button) {
    state.limiting = { key: key, button: button };
    C.clearError("limit-error");
    var l = key.spend_limit;
    $("limit-amount").value = l ? l.amount : "";
    $("limit-period").value = l ? l.period : "day";
    $("limit-remove").hidden = !l;
    C.setText("limit-text", "For “" + key.name + "” (" + key.key_id + ") only. What it has already spent in the current period counts.");
    $("limit-dialog").showModal();
    $("limit-amount").focus();
  }

  function closeLimit() {
    var pending = state.limiting;
    state.limiting = null;
    $("limit-dialog").close();
    if (pending) pending.button.focus();
  }

  function saveLimit(limit, button) {
    var pending = state.limiting;
    if (!pending) return;
    C.clearError("limit-error");
    var path = "v1/billing/api-keys/" + encodeURIComponent(pending.key.key_id);
    C.busy(button, C.patch(path, { spend_limit: limit })).then(
      function (k) {
        closeLimit();
        C.showNotice("success", k.spend_limit ? "Key “" + k.name + "” is limited to " + limitText(k.spend_limit).split(" · ")[0] + "." : "Key “" + k.name + "” has no spend limit now.");
        loadKeys();
      },
      function (err) {
        C.showError("limit-error", err.message, $("limit-amount"));
      }
    );
  }

  function onLimitSubmit(event) {
    event.preventDefault();
    C.clearError("limit-error");
    var value = $("limit-amount").value.trim();
    if (!value || !C.isDecimal(value))
      return C.showError("limit-error", "Enter a limit in credits, such as 25 or 2.50.", $("limit-amount"));
    saveLimit({ amount: value, period: $("limit-period").value }, $("limit-save"));
  }

  function onKeySubmit(event) {
    event.preventDefault();
    C.clearError("key-error");
    var name = $("key-name").value.trim();
    if (!name) return C.showError("key-error", "Give the key a name, such as production.", $("key-name"));
    var scopes = [];
    if ($("key-scope-inference").checked) scopes.push("inference");
    if ($("key-scope-billing").checked) scopes.push("billing");
    if (!scopes.length) return C.showError("key-error", "Choose at least one scope.", $("key-scope-inference"));
    C.busy($("key-create"), C.post("v1/billing/api-keys", { name: name, scopes: scopes })).then(
      function (created) {
        $("key-name").value = "";
        $("new-key-secret").value = created.api_key;
        C.setText("new-key-copied", "");
        var box = $("new-key");
        box.hidden = false;
        box.focus();
        loadKeys();
      },
      function (err) {
        C.showError("key-error", err.message, C.inputForParam($("key-form"), err));
      }
    );
  }

  function copySecret() {
    var input = $("new-key-secret");
    var done = function () {
      C.setText("new-key-copied", "Copied to the clipboard.");
    };
    var fallback = function () {
      input.focus();
      input.select();
      var ok = false;
      try {
        ok = document.execCommand("copy");
      } catch (e) {
        ok = false;
      }
      if (ok) done();
      else C.setText("new-key-copied", "Select the key and copy it with Ctrl+C (⌘C on a Mac).");
    };
    if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(input.value).then(done, fallback);
    else fallback();
  }

  function forgetSecret() {
    $("new-key-secret").value = "";
    $("new-key").hidden = true;
    $("key-name").focus();
  }

  function askRevoke(key, button) {
    state.revoking = { key: key, button: button };
    C.setText(
      "revoke-text",
      "“" + key.name + "” (" + key.key_id + ") stops working within about 30 seconds, for every request that uses it. This cannot be undone."
    );
    var dialog = $("revoke-dialog");
    dialog.returnValue = "";
    dialog.showModal();
  }

  function onDialogClose() {
    var dialog = $("revoke-dialog");
    var pending = state.revoking;
    state.revoking = null;
    if (!pending) return;
    if (dialog.returnValue !== "revoke") {
      pending.button.focus();
      return;
    }
    C.busy(pending.button, C.del("v1/billing/api-keys/" + encodeURIComponent(pending.key.key_id))).then(
      function () {
        C.showNotice("success", "Key “" + pending.key.name + "” is revoked.");
        return loadKeys().then(function () {
          $("keys").focus();
        });
      },
      function (err) {
        if (err.status !== 401 && err.status !== 403) C.showNotice("error", err.message);
      }
    );
  }

  // ------------------------------------------------------------------ start

  function onSignedIn(billing) {
    if (!state.wired) {
      state.wired = true;
      $("cap-form").addEventListener("submit", onCapSubmit);
      $("alerts-form").addEventListener("submit", onAlertsSubmit);
      ["alerts-balance", "alerts-cap"].forEach(function (id) {
        $(id).addEventListener("input", function () { alertsEdited = true; });
      });
      $("cap-remove").addEventListener("click", function () {
        saveCap(null, $("cap-remove"));
      });
      $("key-form").addEventListener("submit", onKeySubmit);
      $("new-key-copy").addEventListener("click", copySecret);
      $("new-key-done").addEventListener("click", forgetSecret);
      $("revoke-dialog").addEventListener("close", onDialogClose);
      $("limit-form").addEventListener("submit", onLimitSubmit);
      $("limit-cancel").addEventListener("click", closeLimit);
      $("limit-remove").addEventListener("click", function () {
        saveLimit(null, $("limit-remove"));
      });
      $("limit-dialog").addEventListener("cancel", function () {
        state.limiting = null;
      });
      $("keys").setAttribute("tabindex", "-1");
    }
    var fail = function (err) {
      if (err && err.status !== 401 && err.status !== 403) C.showNotice("error", err.message);
    };
    (billing ? Promise.resolve(billing) : C.get("v1/billing")).then(renderCap).catch(fail);
    loadKeys().catch(fail);
    C.get("v1/billing/alerts").then(renderAlerts).catch(fail);
  }

  C.start({ public: false, onSignedIn: onSignedIn });
})();
