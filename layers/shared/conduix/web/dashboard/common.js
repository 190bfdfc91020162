/* Conduix dashboard: what every page shares. Sign-in (the org key lives in sessionStorage and
   goes to the API only in an Authorization header), the JSON API client, exact decimal helpers
   (amounts stay strings; sums use BigInt nano-credits, never floats), formatting and DOM helpers.
   No inline handlers anywhere: everything is wired here, so a strict CSP holds. */
(function () {
  "use strict";

  var KEY_SLOT = "conduix.apiKey";
  var ORG_SLOT = "conduix.orgId";
  var FLASH_SLOT = "conduix.flash";
  var NANOS = 1000000000n;

  // ------------------------------------------------------------------ session

  function storage() {
    try {
      return window.sessionStorage;
    } catch (e) {
      return null; // storage blocked: the user simply has to sign in on every page
    }
  }

  function getKey() {
    var s = storage();
    return (s && s.getItem(KEY_SLOT)) || "";
  }

  function setSession(key, orgId) {
    var s = storage();
    if (!s) return;
    s.setItem(KEY_SLOT, key);
    if (orgId) s.setItem(ORG_SLOT, orgId);
  }

  function clearSession() {
    var s = storage();
    if (!s) return;
    s.removeItem(KEY_SLOT);
    s.removeItem(ORG_SLOT);
  }

  function flash(kind, text) {
    var s = storage();
    if (s) s.setItem(FLASH_SLOT, JSON.stringify({ kind: kind, text: text }));
  }

  function takeFlash() {
    var s = storage();
    if (!s) return null;
    var raw = s.getItem(FLASH_SLOT);
    s.removeItem(FLASH_SLOT);
    try {
      return raw ? JSON.parse(raw) : null;
    } catch (e) {
      return null;
    }
  }

  // ------------------------------------------------------------------ API client

  function ApiError(status, message, code, body) {
    this.name = "ApiError";
    this.status = status;
    this.message = message;
    this.code = code || "";
    this.body = body;
  }
  ApiError.prototype = Object.create(Error.prototype);

  var hooks = { onUnauthorized: null };

  /* The API's root, from this script's own URL (<root>dashboard/assets/common.js), so the pages
     work at a custom domain's root and under API Gateway's stage path alike. */
  var API_ROOT = new URL("../../", document.currentScript ? document.currentScript.src : window.location.href);

  /* A path relative to the API's root ("v1/billing", "dashboard/settings") as a full URL. */
  function url(path) {
    return new URL(path, API_ROOT).href;
  }

  /* One call to the JSON API. Resolves with the parsed body; rejects with an ApiError whose
     message is the API's own (OpenAI-style error.message) when there is one. */
  function request(method, path, body, keyOverride) {
    var key = keyOverride || getKey();
    var headers = { Accept: "application/json" };
    if (key) headers.Authorization = "Bearer " + key;
    var init = {
      method: method,
      headers: headers,
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(url(path), init).then(
      function (response) {
        return response.text().then(function (text) {
          var data = null;
          try {
            data = text ? JSON.parse(text) : null;
          } catch (e) {
            data = null;
          }
          if (response.ok) return data;
          var err = (data && data.error) || {};
          var message = err.message || "The API answered " + response.status + ".";
          var apiError = new ApiError(response.status, message, err.code, data);
          if ((response.status === 401 || err.code === "insufficient_permissions") && !keyOverride && hooks.onUnauthorized) {
            hooks.onUnauthorized(apiError);
          }
          throw apiError;
        });
      },
      function () {
        throw new ApiError(0, "Could not reach the Conduix API. Check your connection and try again.", "network");
      }
    );
  }

  /* A CSV export saved as a file. The key travels only in the Authorization header, so the
     file is fetched here and handed to the browser as a Blob (no key in a URL). */
  function download(path, fallbackName) {
    var key = getKey();
    var init = {
      method: "GET",
      headers: key ? { Authorization: "Bearer " + key, Accept: "text/csv" } : { Accept: "text/csv" },
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    };
    return fetch(url(path), init).then(
      function (response) {
        if (!response.ok) {
          return response.text().then(function (text) {
            var data = null;
            try {
              data = JSON.parse(text);
            } catch (e) {
              data = null;
            }
            var err = (data && data.error) || {};
            throw new ApiError(response.status, err.message || "The API answered " + response.status + ".", err.code, data);
          });
        }
        var disposition = response.headers.get("Content-Disposition") || "";
        var m = /filename="([^"]+)"/.exec(disposition);
        var name = m ? m[1] : fallbackName;
        return response.blob().then(function (blob) {
          var link = document.createElement("a");
          link.href = URL.createObjectURL(blob);
          link.download = name;
          link.hidden = true;
          document.body.appendChild(link);
          link.click();
          window.setTimeout(function () {
            URL.revokeObjectURL(link.href);
            link.remove();
          }, 1000);
          return name;
        });
      },
      function () {
        throw new ApiError(0, "Could not reach the Conduix API. Check your connection and try again.", "network");
      }
    );
  }

  // ------------------------------------------------------------------ exact decimals

  /* "12.5" -> 12500000000n. Throws on anything that is not a plain decimal string. */
  function toNanos(text) {
    var m = /^(-?)(\d+)(?:\.(\d{1,9}))?$/.exec(String(text).trim());
    if (!m) throw new Error("not a decimal amount: " + text);
    var frac = (m[3] || "").padEnd(9, "0");
    var value = BigInt(m[2]) * NANOS + BigInt(frac);
    return m[1] ? -value : value;
  }

  /* 12500000000n -> "12.5" (no trailing zeros, like the API). */
  function fromNanos(nanos) {
    var negative = nanos < 0n;
    var abs = negative ? -nanos : nanos;
    var whole = (abs / NANOS).toString();
    var frac = (abs % NANOS).toString().padStart(9, "0").replace(/0+$/, "");
    return (negative ? "-" : "") + whole + (frac ? "." + frac : "");
  }

  function addDecimals(list) {
    return fromNanos(
      list.reduce(function (sum, x) {
        return sum + toNanos(x);
      }, 0n)
    );
  }

  function isDecimal(text) {
    return /^\d+(\.\d{1,9})?$/.test(String(text).trim());
  }

  /* Digit grouping by string operations only: "12345.678" -> "12,345.678". */
  function groupDigits(text) {
    var s = String(text);
    var m = /^([-+]?)(\d+)(\.\d+)?$/.exec(s);
    if (!m) return s;
    return m[1] + m[2].replace(/\B(?=(\d{3})+(?!\d))/g, ",") + (m[3] || "");
  }

  /* An amount from the API, shown as given (with grouping). */
  function credits(text) {
    if (text === null || text === undefined || text === "") return "—";
    return groupDigits(text);
  }

  function signedCredits(text) {
    var s = String(text);
    return s.charAt(0) === "-" ? "−" + groupDigits(s.slice(1)) : "+" + groupDigits(s);
  }

  /* Whole-dollar amounts such as "29" -> "$29"; keeps cents as given ("12.5" -> "$12.50"). */
  function dollars(text) {
    var s = String(text);
    var m = /^(\d+)(?:\.(\d+))?$/.exec(s);
    if (!m) return "$" + s;
    var cents = m[2] ? "." + m[2].padEnd(2, "0") : "";
    return "$" + groupDigits(m[1]) + cents;
  }

  function integer(n) {
    return groupDigits(String(n === null || n === undefined ? 0 : n));
  }

  // ------------------------------------------------------------------ dates (always UTC)

  var MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

  function pad2(n) {
    return String(n).padStart(2, "0");
  }

  function dateTimeUTC(iso) {
    var d = new Date(iso);
    if (isNaN(d.getTime())) return String(iso || "—");
    return (
      MONTHS[d.getUTCMonth()] + " " + d.getUTCDate() + ", " + d.getUTCFullYear() + " " +
      pad2(d.getUTCHours()) + ":" + pad2(d.getUTCMinutes())
    );
  }

  function dateUTC(value) {
    var d = typeof value === "number" ? new Date(value * 1000) : new Date(value);
    if (isNaN(d.getTime())) return "—";
    return MONTHS[d.getUTCMonth()] + " " + d.getUTCDate() + ", " + d.getUTCFullYear();
  }

  /* "2026-11-27" <-> Date at 00:00 UTC */
  function parseDay(text) {
    var m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(text || "");
    if (!m) return null;
    var d = new Date(Date.UTC(+m[1], +m[2] - 1, +m[3]));
    return isNaN(d.getTime()) ? null : d;
  }

  function formatDay(d) {
    return d.getUTCFullYear() + "-" + pad2(d.getUTCMonth() + 1) + "-" + pad2(d.getUTCDate());
  }

  function addDays(d, n) {
    return new Date(d.getTime() + n * 86400000);
  }

  // ------------------------------------------------------------------ DOM

  function $(id) {
    return document.getElementById(id);
  }

  /* el("td", {class: "num"}, "12") — text children only ever become text nodes. */
  function el(tag, attrs) {
    var node = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (name) {
        var value = attrs[name];
        if (value === null || value === undefined || value === false) return;
        if (name === "text") node.textContent = value;
        else node.setAttribute(name, value === true ? "" : value);
      });
    }
    for (var i = 2; i < arguments.length; i++) {
      var child = arguments[i];
      if (child === null || child === undefined) continue;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function setText(id, text) {
    var node = $(id);
    if (node) node.textContent = text;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  /* Only http(s) links from the API become hrefs or navigations. */
  function safeUrl(url) {
    try {
      var u = new URL(url, window.location.href);
      return u.protocol === "https:" || u.protocol === "http:" ? u.href : null;
    } catch (e) {
      return null;
    }
  }

  function showNotice(kind, text) {
    var box = $("notice");
    if (!box) return;
    // The live region stays in the page (an empty one takes no room), so that a message
    // written into it is announced.
    box.className = "notice " + (kind || "info");
    box.textContent = text;
  }

  function hideNotice() {
    var box = $("notice");
    if (box) box.textContent = "";
  }

  function showError(id, message, input) {
    var node = $(id);
    if (!node) return;
    node.textContent = message;
    node.hidden = false;
    if (input) {
      input.setAttribute("aria-invalid", "true");
      input.focus();
    }
  }

  function clearError(id) {
    var node = $(id);
    if (node) {
      node.textContent = "";
      node.hidden = true;
    }
    var scope = (node && node.closest("form")) || document;
    scope.querySelectorAll('[aria-invalid="true"]').forEach(function (input) {
      input.removeAttribute("aria-invalid");
    });
  }

  /* Disable a button while a promise runs, and say so to assistive tech. */
  function busy(button, promise) {
    if (!button) return promise;
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    var done = function () {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    };
    return promise.then(
      function (value) {
        done();
        return value;
      },
      function (err) {
        done();
        throw err;
      }
    );
  }

  /* The input of a field named in an API error's "param", if this form has one. */
  function inputForParam(form, err) {
    var param = err && err.body && err.body.error && err.body.error.param;
    return param && form ? form.querySelector('[name="' + param.replace(/[^a-z_]/gi, "") + '"]') : null;
  }

  function wait(ms) {
    return new Promise(function (resolve) {
      window.setTimeout(resolve, ms);
    });
  }

  // ------------------------------------------------------------------ sign-in and the page lifecycle

  var page = { options: null, pending: null };

  function showAccount() {
    var s = storage();
    var org = (s && s.getItem(ORG_SLOT)) || "";
    $("account").hidden = !getKey();
    setText("account-org", org);
    $("account-org").title = org ? "Signed in to " + org : "";
  }

  function showSignIn(message) {
    var section = $("sign-in");
    section.hidden = false;
    if (message) {
      setText("sign-in-why", message);
    }
    if (!page.options.public) $("content").hidden = true;
    showAccount();
    var input = $("sign-in-key");
    input.value = "";
    input.focus();
  }

  function enterDashboard(billing) {
    $("sign-in").hidden = true;
    $("content").hidden = false;
    showAccount();
    if (page.options.onSignedIn) page.options.onSignedIn(billing || null);
  }

  function onSignInSubmit(event) {
    event.preventDefault();
    clearError("sign-in-error");
    var input = $("sign-in-key");
    var key = input.value.trim();
    if (!key) {
      showError("sign-in-error", "Enter an API key.", input);
      return;
    }
    busy(
      $("sign-in-submit"),
      request("GET", "v1/billing", undefined, key)
    ).then(
      function (billing) {
        setSession(key, billing && billing.org_id);
        input.value = "";
        hideNotice();
        enterDashboard(billing);
        $("main").focus(); // the form is gone: start reading from the top of the page
        var next = page.pending;
        page.pending = null;
        if (next) next(billing);
      },
      function (err) {
        var message = err.message;
        if (err.status === 401) message = "That key was not recognized: it is unknown or has been revoked.";
        else if (err.status === 403)
          message = "That key does not have the billing scope. Use a key with billing scope (see Settings → API keys).";
        showError("sign-in-error", message, input);
      }
    );
  }

  function signOut() {
    clearSession();
    flash("info", "You are signed out. The key was removed from this browser tab.");
    // A fresh load leaves no figure of the previous org on screen.
    window.location.replace(window.location.pathname);
  }

  /* Pages call this once: {public: bool, onSignedIn(billingOrNull), onPublic()} */
  function start(options) {
    page.options = options;
    var run = function () {
      $("sign-in-form").addEventListener("submit", onSignInSubmit);
      $("sign-out").addEventListener("click", signOut);
      hooks.onUnauthorized = function (err) {
        clearSession();
        showAccount();
        var why =
          err.status === 401
            ? "Your key is no longer accepted (it may have been revoked). Sign in again with a key that has the billing scope."
            : "This key does not have the billing scope. Sign in with a key that has it.";
        showSignIn(why);
      };
      var f = takeFlash();
      if (f) showNotice(f.kind, f.text);
      if (options.onLoad) options.onLoad();
      if (getKey()) {
        enterDashboard(null);
      } else if (!options.public) {
        showSignIn(null);
      } else {
        showAccount();
      }
    };
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", run);
    else run();
  }

  /* Public pages: ask for a key, then carry on with `next`. */
  function requireSignIn(message, next) {
    page.pending = next;
    showSignIn(message);
    $("sign-in").scrollIntoView({ block: "center" });
  }

  /* Strip our own query parameters (e.g. ?top_up=success) once read. */
  function cleanUrl() {
    if (window.location.search) window.history.replaceState(null, "", window.location.pathname);
  }

  window.Conduix = {
    ApiError: ApiError,
    request: request,
    url: url,
    get: function (path) {
      return request("GET", path);
    },
    post: function (path, body) {
      return request("POST", path, body === undefined ? {} : body);
    },
    put: function (path, body) {
      return request("PUT", path, body);
    },
    patch: function (path, body) {
      return request("PATCH", path, body);
    },
    del: function (path) {
      return request("DELETE", path);
    },
    download: download,
    signedIn: function () {
      return !!getKey();
    },
    start: start,
    requireSignIn: requireSignIn,
    cleanUrl: cleanUrl,
    toNanos: toNanos,
    fromNanos: fromNanos,
    addDecimals: addDecimals,
    isDecimal: isDecimal,
    groupDigits: groupDigits,
    credits: credits,
    signedCredits: signedCredits,
    dollars: dollars,
    integer: integer,
    dateTimeUTC: dateTimeUTC,
    dateUTC: dateUTC,
    parseDay: parseDay,
    formatDay: formatDay,
    addDays: addDays,
    $: $,
    el: el,
    setText: setText,
    clear: clear,
    safeUrl: safeUrl,
    showNotice: showNotice,
    hideNotice: hideNotice,
    showError: showError,
    clearError: clearError,
    busy: busy,
    inputForParam: inputForParam,
    wait: wait,
  };
})();
