/* /dashboard/billing: balance, plan, top-ups, auto-reload, invoices and the ledger. */
(function () {
  "use strict";
  var C = window.Conduix;
  var $ = C.$;
  var el = C.el;
  var LEDGER_PAGE = 25;
  var POLL_TRIES = 12;
  var POLL_MS = 1000;

  var state = { billing: null, cursor: null, wired: false };

  var TYPES = {
    usage: "Usage",
    top_up: "Top-up",
    grant: "Grant",
    auto_reload: "Auto-reload",
    plan_credits: "Plan credits",
    refund: "Refund",
    dispute: "Dispute",
    invoice: "Invoice",
    invoice_payment: "Invoice payment",
    hold_release: "Hold released",
    dispute_won: "Dispute won",
    expiry: "Expired credits",
  };

  // ------------------------------------------------------------------ balance, plan, reload

  function renderBilling(b) {
    state.billing = b;
    C.setText("balance", C.credits(b.balance));
    C.setText("held", C.credits(b.held));
    C.setText("available", C.credits(b.available));
    C.setText("month-spent", C.credits(b.month && b.month.spent));
    C.setText("month-period", b.month ? "(" + b.month.period + ", UTC)" : "");

    var paused = b.account_state === "paused";
    var badge = $("account-state");
    badge.textContent = paused ? "Paused" : "Active";
    badge.className = "badge " + (paused ? "bad" : "ok");
    badge.setAttribute("aria-label", "Account state: " + (paused ? "paused" : "active"));
    $("paused-help").hidden = !paused;

    var capLine = $("cap-line");
    C.clear(capLine);
    if (b.spend_cap) {
      capLine.appendChild(
        document.createTextNode(
          "Monthly spend cap: " + C.credits(b.spend_cap.monthly_limit) + " credits, " +
            C.credits(b.spend_cap.used) + " used, " + C.credits(b.spend_cap.remaining) + " remaining. "
        )
      );
    } else {
      capLine.appendChild(document.createTextNode("No monthly spend cap. "));
    }
    capLine.appendChild(el("a", { href: C.url("dashboard/settings"), text: b.spend_cap ? "Change the cap" : "Set a cap" }));

    var plan = b.plan || {};
    C.setText("plan-name", plan.name || plan.id || "—");
    C.setText("plan-included", C.credits(plan.included_credits || "0") + " credits");
    var sub = plan.subscription;
    C.setText(
      "plan-subscription",
      sub
        ? sub.status.replace(/_/g, " ") + (sub.current_period_end ? " · renews " + C.dateUTC(sub.current_period_end) : "")
        : "None: pay as you go"
    );
    C.setText("billing-mode", b.billing_mode === "invoice" ? "Monthly invoice (NET-30)" : "Prepaid credits");
    var warning = $("plan-warning");
    warning.hidden = !(sub && sub.last_payment_failed);
    warning.textContent = "The last payment for your plan failed. Stripe retries it; update your card to keep the plan.";

    var card = b.saved_card;
    C.setText(
      "saved-card",
      card
        ? cap(card.brand) + " ending in " + card.last4 +
            (card.exp_month ? ", expires " + String(card.exp_month).padStart(2, "0") + "/" + card.exp_year : "")
        : "No saved card yet. Your first top-up saves the card you pay with."
    );
    var reload = b.auto_reload || {};
    var last = reload.last_result;
    var lastText = last
      ? cap(String(last.status)) + (last.message ? ": " + last.message : "") + (last.at ? " (" + C.dateTimeUTC(last.at) + " UTC)" : "")
      : "No reload has run yet.";
    if (reload.consecutive_failures) lastText += " · " + reload.consecutive_failures + " failed attempt(s) in a row";
    C.setText("reload-last", lastText);
    renderExpiring(b.expiring_credits);
  }

  function renderReloadForm(b) {
    var reload = (b && b.auto_reload) || {};
    $("reload-enabled").checked = !!reload.enabled;
    $("reload-threshold").value = reload.threshold || "";
    $("reload-amount").value = reload.amount || "";
  }

  function cap(text) {
    text = String(text || "");
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function loadBilling() {
    return C.get("v1/billing").then(function (b) {
      renderBilling(b);
      return b;
    });
  }

  // ------------------------------------------------------------------ top-ups

  function renderTiers(tiers) {
    var box = $("top-up-tiers");
    C.clear(box);
    tiers.forEach(function (amount) {
      var button = el(
        "button",
        { type: "button", class: "button tier", "data-amount": amount },
        el("span", { class: "tier-amount", text: C.credits(amount) }),
        el("small", { text: "credits · " + C.dollars(amount) })
      );
      button.addEventListener("click", function () {
        topUp(amount, button);
      });
      box.appendChild(button);
    });
  }

  function topUp(amount, button) {
    C.clearError("top-up-error");
    C.busy(button, C.post("v1/billing/top-ups", { amount: amount })).then(
      function (session) {
        var url = session && C.safeUrl(session.checkout_url);
        if (!url) {
          C.showError("top-up-error", "The API did not return a checkout page.");
          return;
        }
        C.showNotice("info", "Opening the secure checkout page…");
        window.location.assign(url);
      },
      function (err) {
        C.showError("top-up-error", err.message);
      }
    );
  }

  // ------------------------------------------------------------------ auto-reload

  function onReloadSubmit(event) {
    event.preventDefault();
    var form = event.currentTarget;
    C.clearError("reload-error");
    var enabled = $("reload-enabled").checked;
    var threshold = $("reload-threshold").value.trim();
    var amount = $("reload-amount").value.trim();
    var body = { enabled: enabled };
    if (threshold) {
      if (!C.isDecimal(threshold))
        return C.showError("reload-error", "The threshold must be a number of credits, such as 5.", $("reload-threshold"));
      body.threshold = threshold;
    }
    if (amount) {
      if (!C.isDecimal(amount))
        return C.showError("reload-error", "The amount must be a number of credits, such as 25.", $("reload-amount"));
      body.amount = amount;
    }
    if (enabled && !threshold)
      return C.showError("reload-error", "Enter the threshold to turn auto-reload on.", $("reload-threshold"));
    if (enabled && !amount)
      return C.showError("reload-error", "Enter the amount to turn auto-reload on.", $("reload-amount"));
    C.busy($("reload-save"), C.put("v1/billing/auto-reload", body)).then(
      function (b) {
        renderBilling(b);
        renderReloadForm(b);
        var r = b.auto_reload;
        C.showNotice(
          "success",
          r.enabled
            ? "Auto-reload is on: when your available balance falls below " + C.credits(r.threshold) +
                " credits, " + C.credits(r.amount) + " credits are added."
            : "Auto-reload is off."
        );
      },
      function (err) {
        // The switch goes back to what is saved; the message says why.
        if (state.billing) $("reload-enabled").checked = !!state.billing.auto_reload.enabled;
        C.showError("reload-error", err.message, C.inputForParam(form, err));
      }
    );
  }

  // ------------------------------------------------------------------ expiring credits, notices

  var NOTICE_TYPES = {
    balance_below: "Balance alert",
    cap_used_percent: "Spend cap alert",
    account_paused: "Account paused",
    top_up_receipt: "Top-up receipt",
    auto_reload_succeeded: "Auto-reload succeeded",
    auto_reload_failed: "Auto-reload failed",
    auto_reload_turned_off: "Auto-reload turned off",
    auto_reload_paused: "Auto-reload paused",
  };

  function renderExpiring(grants) {
    grants = grants || [];
    var body = $("expiring").tBodies[0];
    C.clear(body);
    grants.forEach(function (g) {
      body.appendChild(
        el(
          "tr",
          { "data-grant": g.grant },
          el("td", { text: C.dateTimeUTC(g.expires_at) }),
          el("td", { text: C.dateUTC(g.granted_at) }),
          el("td", { class: "num", text: C.credits(g.granted) }),
          el("td", { class: "num", text: C.credits(g.remaining) })
        )
      );
    });
    $("expiring-empty").hidden = grants.length > 0;
  }

  function loadNotices() {
    return C.get("v1/billing/notices?limit=20").then(function (list) {
      var rows = (list && list.data) || [];
      var body = $("notices").tBodies[0];
      C.clear(body);
      rows.forEach(function (n) {
        body.appendChild(
          el(
            "tr",
            {},
            el("td", { text: C.dateTimeUTC(n.sent_at) }),
            el("td", { text: NOTICE_TYPES[n.type] || n.type }),
            el("td", { text: n.subject }),
            el("td", { text: n.recipient + (n.delivered ? "" : " (not delivered)") })
          )
        );
      });
      $("notices-empty").hidden = rows.length > 0;
      return rows;
    });
  }

  // ------------------------------------------------------------------ invoices

  function loadInvoices() {
    return C.get("v1/billing/invoices").then(function (list) {
      var rows = (list && list.data) || [];
      var body = $("invoices").tBodies[0];
      C.clear(body);
      rows.forEach(function (inv) {
        var name = inv.number || inv.id;
        var links = el("td", { class: "links action" });
        var hosted = C.safeUrl(inv.hosted_invoice_url);
        var pdf = C.safeUrl(inv.invoice_pdf);
        if (hosted)
          links.appendChild(el("a", { href: hosted, target: "_blank", rel: "noopener noreferrer", "aria-label": "View invoice " + name, text: "View" }));
        if (pdf)
          links.appendChild(el("a", { href: pdf, target: "_blank", rel: "noopener noreferrer", "aria-label": "Download invoice " + name + " as PDF", text: "PDF" }));
        if (!hosted && !pdf) links.textContent = "—";
        var currency = String(inv.currency || "usd").toUpperCase();
        var status = String(inv.status || "");
        body.appendChild(
          el(
            "tr",
            { "data-invoice": inv.id },
            el("td", { text: name }),
            el("td", { text: inv.created ? C.dateUTC(inv.created) : "—" }),
            el("td", { text: inv.description || "—" }),
            el("td", {}, el("span", { class: "badge " + (status === "paid" ? "ok" : status === "open" ? "neutral" : "bad"), text: status || "—" })),
            el("td", { class: "num", text: currency === "USD" ? C.dollars(inv.total) : C.credits(inv.total) + " " + currency }),
            links
          )
        );
      });
      $("invoices-empty").hidden = rows.length > 0;
      return rows;
    });
  }

  // ------------------------------------------------------------------ ledger

  function ledgerRow(e) {
    var amount = String(e.amount);
    return el(
      "tr",
      { "data-entry": e.id },
      el("td", {}, el("time", { datetime: e.created_at, text: C.dateTimeUTC(e.created_at) })),
      el("td", { text: e.description || e.reference || "" }),
      el("td", { text: TYPES[e.type] || e.type }),
      el("td", { class: "num" + (amount.charAt(0) === "-" ? "" : " positive"), text: C.signedCredits(amount) }),
      el("td", { class: "num", text: C.credits(e.balance_after) })
    );
  }

  function ledgerQuery() {
    var type = $("ledger-type").value;
    return type ? "type=" + encodeURIComponent(type) : "";
  }

  function loadLedger(more) {
    var filter = ledgerQuery();
    var path = "v1/billing/ledger?limit=" + LEDGER_PAGE + (filter ? "&" + filter : "");
    if (more && state.cursor) path += "&cursor=" + encodeURIComponent(state.cursor);
    return C.get(path).then(function (page) {
      var body = $("ledger").tBodies[0];
      if (!more) C.clear(body);
      var first = null;
      (page.data || []).forEach(function (entry) {
        var row = ledgerRow(entry);
        if (!first) first = row;
        body.appendChild(row);
      });
      state.cursor = page.next_cursor || null;
      $("ledger-more").hidden = !state.cursor;
      $("ledger-empty").hidden = body.rows.length > 0;
      return page;
    });
  }

  function onLoadMore() {
    var button = $("ledger-more");
    var before = $("ledger").tBodies[0].rows.length;
    C.busy(button, loadLedger(true)).then(
      function () {
        var rows = $("ledger").tBodies[0].rows;
        var added = rows.length - before;
        C.setText("ledger-status", added === 1 ? "1 more entry loaded." : added + " more entries loaded.");
        if (button.hidden && rows[before]) {
          rows[before].setAttribute("tabindex", "-1");
          rows[before].focus();
        }
      },
      function (err) {
        C.setText("ledger-status", err.message);
      }
    );
  }

  // ------------------------------------------------------------------ back from checkout

  function ledgerHas(reference) {
    return C.get("v1/billing/ledger?limit=" + LEDGER_PAGE).then(function (page) {
      return (page.data || []).some(function (e) {
        return e.reference === reference;
      });
    });
  }

  /* Credits land by webhook a moment after the redirect: poll until the balance moves. */
  function waitForTopUp(sessionId) {
    var initial = state.billing.balance;
    var invoicesBefore = $("invoices").tBodies[0].rows.length;
    // Stripe may finish the top-up's invoice a moment after the credits land.
    var invoicesAfter = function (n) {
      return loadInvoices().then(function (rows) {
        if (rows.length > invoicesBefore || n >= 4) return rows;
        return C.wait(POLL_MS).then(function () {
          return invoicesAfter(n + 1);
        });
      });
    };
    var landed = function () {
      C.showNotice("success", "Payment received: your credits were added. Your balance is now " + C.credits(state.billing.balance) + " credits.");
      return Promise.all([loadLedger(false), invoicesAfter(0)]);
    };
    var check = sessionId ? ledgerHas(sessionId) : Promise.resolve(false);
    return check.then(function (already) {
      if (already) return landed();
      C.showNotice("info", "Payment received. Your credits appear as soon as Stripe confirms the payment (usually a few seconds)…");
      var attempt = function (n) {
        if (n >= POLL_TRIES) {
          C.showNotice("info", "Stripe is still confirming your payment. The credits will appear here shortly; refresh in a minute.");
          return null;
        }
        return C.wait(POLL_MS)
          .then(loadBilling)
          .then(function (b) {
            if (b.balance !== initial) return landed();
            return attempt(n + 1);
          });
      };
      return attempt(0);
    });
  }

  function waitForPlan() {
    var initial = state.billing.plan && state.billing.plan.id;
    C.showNotice("info", "Subscription payment received. Your plan changes as soon as Stripe confirms it…");
    var attempt = function (n) {
      if (n >= POLL_TRIES) {
        C.showNotice("info", "Stripe is still confirming your subscription. Refresh in a minute to see your new plan.");
        return null;
      }
      return C.wait(POLL_MS)
        .then(loadBilling)
        .then(function (b) {
          if (b.plan && b.plan.id !== initial && b.plan.subscription)
            return Promise.all([loadLedger(false), loadInvoices()]).then(function () {
              C.showNotice("success", "You are now on the " + b.plan.name + " plan.");
            });
          return attempt(n + 1);
        });
    };
    return attempt(0);
  }

  // ------------------------------------------------------------------ start

  function wire() {
    if (state.wired) return;
    state.wired = true;
    $("reload-form").addEventListener("submit", onReloadSubmit);
    $("ledger-more").addEventListener("click", onLoadMore);
    $("ledger-type").addEventListener("change", function () {
      C.clearError("ledger-error");
      loadLedger(false).catch(function (err) {
        C.showError("ledger-error", err.message, null);
      });
    });
    $("ledger-download").addEventListener("click", function (event) {
      var filter = ledgerQuery();
      C.clearError("ledger-error");
      C.busy(event.currentTarget, C.download("v1/billing/ledger?format=csv" + (filter ? "&" + filter : ""), "ledger.csv")).then(
        function (name) {
          C.setText("ledger-status", "Saved " + name + ".");
        },
        function (err) {
          C.showError("ledger-error", err.message, null);
        }
      );
    });
  }

  function onSignedIn(billing) {
    wire();
    var params = new URLSearchParams(window.location.search);
    var topUpResult = params.get("top_up");
    var subscriptionResult = params.get("subscription");
    var sessionId = params.get("session_id");
    C.cleanUrl();
    var first = billing ? Promise.resolve(billing).then(function (b) { renderBilling(b); return b; }) : loadBilling();
    var fail = function (err) {
      if (err && err.status !== 401 && err.status !== 403) C.showNotice("error", err.message);
    };
    first
      .then(function (b) {
        renderReloadForm(b);
        C.get("v1/pricing").then(function (p) { renderTiers(p.top_up_tiers || []); }, fail);
        loadInvoices().catch(fail);
        loadNotices().catch(fail);
        return loadLedger(false).then(function () {
          if (topUpResult === "success") return waitForTopUp(sessionId);
          if (topUpResult === "cancelled") C.showNotice("info", "Top-up cancelled. Nothing was charged.");
          if (subscriptionResult === "success") return waitForPlan();
          return null;
        });
      })
      .catch(fail);
  }

  C.start({ public: false, onSignedIn: onSignedIn });
})();
