/* /pricing (public): plans, top-up tiers, model prices and the cache note. Choosing a plan
   needs a signed-in key; the page asks for one when it has none. */
(function () {
  "use strict";
  var C = window.Conduix;
  var $ = C.$;
  var el = C.el;

  var state = { pricing: null, currentPlan: null, buttons: {} };

  function ttl(seconds) {
    if (!seconds) return null;
    if (seconds % 86400 === 0) return seconds / 86400 + (seconds === 86400 ? " day" : " days");
    if (seconds % 3600 === 0) return seconds / 3600 + (seconds === 3600 ? " hour" : " hours");
    return seconds + " seconds";
  }

  function renderPlans(pricing) {
    var box = $("plans");
    C.clear(box);
    state.buttons = {};
    (pricing.plans || []).forEach(function (plan) {
      var titleId = "plan-" + plan.id + "-title";
      var free = plan.monthly_price === "0";
      var list = el("ul", {});
      (plan.highlights || []).forEach(function (h) {
        list.appendChild(el("li", { text: h }));
      });
      var button = el("button", {
        type: "button",
        class: "button " + (plan.id === "builder" ? "primary" : ""),
        "data-plan": plan.id,
        "aria-describedby": titleId,
        text: "Choose " + plan.name,
      });
      button.addEventListener("click", function () {
        choose(plan);
      });
      state.buttons[plan.id] = button;
      var included =
        plan.included_credits && plan.included_credits !== "0"
          ? C.credits(plan.included_credits) + " credits included every month"
          : "No included credits: pay as you go";
      var features = plan.features || {};
      var facts = el("p", { class: "hint" });
      var cacheFor = ttl(features.cache_ttl_seconds);
      facts.textContent = [
        cacheFor ? "Cache answers kept " + cacheFor : null,
        features.max_api_keys ? "up to " + features.max_api_keys + " API keys" : null,
      ]
        .filter(Boolean)
        .join(" · ");
      box.appendChild(
        el(
          "article",
          { class: "card plan", "aria-labelledby": titleId, "data-plan": plan.id },
          el("h3", { id: titleId, text: plan.name }),
          el("p", { class: "price" }, free ? "$0" : C.dollars(plan.monthly_price), el("span", { text: " / month" })),
          el("p", { class: "included", text: included }),
          list,
          facts,
          button
        )
      );
    });
    markCurrent();
  }

  function markCurrent() {
    Object.keys(state.buttons).forEach(function (id) {
      var button = state.buttons[id];
      var card = button.closest(".plan");
      var current = id === state.currentPlan;
      card.classList.toggle("current", current);
      var name = card.querySelector("h3").textContent;
      button.textContent = current ? "Your current plan" : "Choose " + name;
      if (current) button.setAttribute("aria-disabled", "true");
      else button.removeAttribute("aria-disabled");
    });
  }

  function renderRest(pricing) {
    C.setText("credit-value", (pricing.credit_value || "1 credit = 1 USD") + ". Prices in US dollars, billed monthly.");
    var tiers = $("pricing-tiers");
    C.clear(tiers);
    (pricing.top_up_tiers || []).forEach(function (t) {
      tiers.appendChild(el("li", {}, el("strong", { text: C.dollars(t) }), " → " + C.credits(t) + " credits"));
    });
    var body = $("model-prices").tBodies[0];
    C.clear(body);
    (pricing.models || []).forEach(function (m) {
      body.appendChild(
        el(
          "tr",
          { "data-model": m.id },
          el("th", { scope: "row" }, el("code", { text: m.id })),
          el("td", { class: "num", text: C.credits(m.input_per_million) }),
          el("td", { class: "num", text: C.credits(m.output_per_million) })
        )
      );
    });
    C.setText("cache-note", pricing.cache || "");
  }

  function choose(plan) {
    C.clearError("plans-error");
    if (plan.id === state.currentPlan) {
      C.showNotice("info", "You are already on the " + plan.name + " plan.");
      return;
    }
    if (!C.signedIn()) {
      C.requireSignIn("Sign in with an API key that has the billing scope to choose the " + plan.name + " plan.", function (billing) {
        state.currentPlan = billing && billing.plan ? billing.plan.id : null;
        markCurrent();
        if (state.currentPlan !== plan.id) choose(plan);
        else C.showNotice("info", "You are already on the " + plan.name + " plan.");
      });
      return;
    }
    if (plan.id === "free" && state.currentPlan && state.currentPlan !== "free" &&
        !window.confirm("Cancel your subscription and move to the Free plan? Included credits already in your wallet stay there.")) {
      return;
    }
    var button = state.buttons[plan.id];
    C.busy(button, C.post("v1/billing/subscription", { plan: plan.id })).then(
      function (result) {
        var url = result && result.checkout_url ? C.safeUrl(result.checkout_url) : null;
        if (url) {
          C.showNotice("info", "Opening the secure checkout page…");
          window.location.assign(url);
          return;
        }
        if (result.status === "changed") C.showNotice("success", "Your plan is now " + plan.name + ". The price change shows on your next invoice.");
        else if (result.status === "canceled") C.showNotice("success", "Your subscription is canceled; you are on the Free plan.");
        else C.showNotice("info", "Nothing changed: you are on the " + plan.name + " plan.");
        state.currentPlan = result.plan || plan.id;
        markCurrent();
      },
      function (err) {
        if (err.status === 401 || err.status === 403) {
          state.currentPlan = null;
          markCurrent();
          return;
        }
        C.showError("plans-error", err.message);
      }
    );
  }

  function onSignedIn(billing) {
    var apply = function (b) {
      state.currentPlan = b && b.plan ? b.plan.id : null;
      if (state.pricing) markCurrent();
    };
    if (billing) apply(billing);
    else C.get("v1/billing").then(apply, function () {});
  }

  function onLoad() {
    var params = new URLSearchParams(window.location.search);
    if (params.get("subscription") === "cancelled") {
      C.showNotice("info", "Checkout was cancelled. Your plan did not change and nothing was charged.");
      C.cleanUrl();
    }
    C.request("GET", "v1/pricing").then(
      function (pricing) {
        state.pricing = pricing;
        renderPlans(pricing);
        renderRest(pricing);
      },
      function (err) {
        C.showError("plans-error", "Prices could not be loaded: " + err.message);
      }
    );
  }

  C.start({ public: true, onLoad: onLoad, onSignedIn: onSignedIn });
})();
