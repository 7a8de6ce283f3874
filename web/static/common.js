// Shared by the client page and the dashboard. Everything that comes from the server is put on
// the page with textContent or as an attribute value, never parsed as HTML.
"use strict";

(function () {
  class ApiError extends Error {
    constructor(status, code, message, details) {
      super(message);
      this.status = status;
      this.code = code;
      this.details = details || null;
      this.retryAfter = null;
    }
  }

  // One JSON call. `key` goes into the Authorization header; errors become ApiError with the
  // server's own message (API.md: {"error": {"code", "message"}}).
  async function request(path, key, options) {
    const opts = options || {};
    const headers = Object.assign({ Accept: "application/json" }, opts.headers || {});
    if (key) headers.Authorization = "Bearer " + key;
    let body;
    if (opts.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.body);
    }
    let response;
    try {
      response = await fetch(path, {
        method: opts.method || "GET", headers: headers, body: body, cache: "no-store",
      });
    } catch (_err) {
      // Whether anything retries is the caller's to say: most calls do not.
      throw new ApiError(0, "network_error", "Could not reach the server. Check your connection and try again.");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (_err) {
      data = null;
    }
    if (!response.ok) {
      const err = data && typeof data === "object" && data.error ? data.error : {};
      const message = typeof err.message === "string" && err.message
        ? err.message : "The request failed (HTTP " + response.status + ").";
      const failure = new ApiError(response.status, err.code || "http_" + response.status,
        message, Array.isArray(err.details) ? err.details : null);
      const retry = Number(response.headers.get("Retry-After"));
      if (retry > 0) failure.retryAfter = retry;
      throw failure;
    }
    return data;
  }

  // A readable sentence for an error, with validation details when the server gave them.
  function describe(err) {
    if (!(err instanceof ApiError)) return "Something went wrong: " + String(err);
    if (err.details && err.details.length) {
      const parts = err.details.map(function (d) {
        return (d.field ? d.field + ": " : "") + d.message;
      });
      return err.message + " " + parts.join("; ");
    }
    return err.message;
  }

  // el("li", {className: "x", text: "...", dataset: {testid: "task"}}, child, ...)
  function el(tag, props) {
    const node = document.createElement(tag);
    const p = props || {};
    if (p.className) node.className = p.className;
    if (p.text !== undefined && p.text !== null) node.textContent = String(p.text);
    if (p.title) node.title = p.title;
    if (p.type) node.type = p.type;
    if (p.dataset) {
      for (const [name, value] of Object.entries(p.dataset)) node.dataset[name] = value;
    }
    for (let i = 2; i < arguments.length; i++) {
      if (arguments[i]) node.appendChild(arguments[i]);
    }
    return node;
  }

  function byId(id) {
    return document.getElementById(id);
  }

  function showError(message) {
    const box = byId("error");
    box.textContent = message;
    box.hidden = false;
  }

  function clearError() {
    const box = byId("error");
    box.textContent = "";
    box.hidden = true;
  }

  function parseTime(value) {
    if (!value) return null;
    const date = new Date(value);
    return isNaN(date.getTime()) ? null : date;
  }

  // "14:03:27" today, "3 Mar, 14:03" on other days.
  function formatTime(value) {
    const date = parseTime(value);
    if (!date) return "—";
    const now = new Date();
    if (date.toDateString() === now.toDateString()) {
      return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    }
    return date.toLocaleString([], {
      day: "numeric", month: "short", hour: "2-digit", minute: "2-digit",
    });
  }

  function formatDuration(seconds) {
    if (!isFinite(seconds) || seconds < 0) return "";
    if (seconds < 60) return seconds.toFixed(seconds < 10 ? 1 : 0) + " s";
    const minutes = Math.floor(seconds / 60);
    const rest = Math.round(seconds % 60);
    if (minutes < 60) return minutes + " min" + (rest ? " " + rest + " s" : "");
    return Math.floor(minutes / 60) + " h" + (minutes % 60 ? " " + (minutes % 60) + " min" : "");
  }

  function isHttpUrl(value) {
    if (typeof value !== "string") return false;
    try {
      const url = new URL(value, window.location.href);
      return url.protocol === "http:" || url.protocol === "https:";
    } catch (_err) {
      return false;
    }
  }

  // A random token for Idempotency-Key (crypto.randomUUID needs a secure context; this does not).
  function randomToken() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return Array.from(bytes, function (b) { return b.toString(16).padStart(2, "0"); }).join("");
  }

  window.Taskhook = {
    ApiError: ApiError,
    request: request,
    describe: describe,
    el: el,
    byId: byId,
    showError: showError,
    clearError: clearError,
    parseTime: parseTime,
    formatTime: formatTime,
    formatDuration: formatDuration,
    isHttpUrl: isHttpUrl,
    randomToken: randomToken,
  };
})();
