// The operator dashboard: tasks by state, stuck tasks, dead letters, vendor health, refunds and
// credits, refreshed every few seconds from /admin/api/overview with the admin key.
"use strict";

(function () {
  const T = window.Taskhook;
  const el = T.el;
  const $ = T.byId;

  const KEY_STORAGE = "taskhook.adminKey";
  const REFRESH_MS = 3000;
  const STATES = ["pending", "submitted", "processing", "storing", "completed", "failed", "canceled"];

  const state = { key: null, session: 0, timer: null, loading: false, again: false };

  function call(path, options) {
    return T.request(path, state.key, options);
  }

  // ---- signing in and out -------------------------------------------------------------------

  async function signIn(key, typed) {
    const session = ++state.session;
    state.key = key;
    let overview;
    try {
      overview = await call("/admin/api/overview");
    } catch (err) {
      if (session !== state.session) return;
      if (err.status === 401) {
        state.key = null;
        sessionStorage.removeItem(KEY_STORAGE);
        T.showError(typed ? "That admin key was not accepted."
          : "The saved admin key is no longer valid. Please sign in again.");
        showSignIn();
      } else {
        T.showError(T.describe(err));
        setTimeout(function () { if (session === state.session) signIn(key, false); }, 3000);
      }
      return;
    }
    if (session !== state.session) return;
    sessionStorage.setItem(KEY_STORAGE, key);
    T.clearError();
    $("admin-key").value = "";
    $("signin").hidden = true;
    $("dashboard").hidden = false;
    $("account").hidden = false;
    render(overview);
    schedule(session);
  }

  function signOut() {
    state.session++;
    state.key = null;
    clearTimeout(state.timer);
    sessionStorage.removeItem(KEY_STORAGE);
    T.clearError();
    hideNotice();
    showSignIn();
  }

  function showSignIn() {
    $("dashboard").hidden = true;
    $("account").hidden = true;
    $("signin").hidden = false;
    $("admin-key").focus();
  }

  // ---- refreshing ---------------------------------------------------------------------------

  function schedule(session) {
    clearTimeout(state.timer);
    state.timer = setTimeout(function () { refresh(session); }, REFRESH_MS);
  }

  async function refresh(session) {
    if (session !== state.session) return;
    if (state.loading) {
      state.again = true; // an answer already on its way may predate what just changed
      return;
    }
    state.loading = true;
    state.again = false;
    try {
      const overview = await call("/admin/api/overview");
      if (session !== state.session) return;
      T.clearError();
      render(overview);
      // An open task follows along: its timeline, vendor job and ledger as they change.
      const open = $("task-detail");
      if (!open.hidden && open.dataset.taskId) {
        showTask(await call("/admin/api/tasks/" + encodeURIComponent(open.dataset.taskId)));
      }
    } catch (err) {
      if (session !== state.session) return;
      if (err.status === 401) {
        signOut();
        T.showError("The admin key is no longer valid. Please sign in again.");
        return;
      }
      // Keep showing the last good numbers, and say they are stale.
      T.showError("Could not refresh: " + T.describe(err));
    } finally {
      state.loading = false;
      if (session === state.session) {
        if (state.again) refreshNow();
        else schedule(session);
      }
    }
  }

  function refreshNow() {
    clearTimeout(state.timer);
    refresh(state.session);
  }

  // ---- rendering ----------------------------------------------------------------------------

  function render(overview) {
    renderCounts(overview.counts || {});
    renderVendors(overview.vendors || []);
    renderDeadLetters(overview.dead_letters || []);
    renderStuck(overview.stuck || [], overview.silent_after_seconds);
    renderRefunds(overview.refunds || []);
    renderUsers(overview.users || []);
    renderClientWebhooks(overview.client_webhooks || {});
    $("updated").textContent = "Updated " + T.formatTime(new Date().toISOString());
  }

  function renderCounts(counts) {
    const box = $("stats");
    if (!box.children.length) {
      for (const status of STATES) {
        box.appendChild(el("div", { className: "stat stat-" + status },
          el("span", { className: "stat-label", text: status }),
          el("span", {
            className: "stat-value", text: "0",
            dataset: { testid: "state-count", status: status },
          })));
      }
    }
    for (const status of STATES) {
      const value = box.querySelector('[data-testid="state-count"][data-status="' + status + '"]');
      value.textContent = String(Number(counts[status]) || 0);
    }
  }

  function cell(text, className) {
    return el("td", { text: text === null || text === undefined || text === "" ? "—" : text, className: className });
  }

  // Long ids stay whole in the text (copy, search) but are shortened on screen.
  function taskId(id) {
    return el("code", { className: "id", text: id, title: id });
  }

  function badge(text, kind) {
    return el("span", { className: "status status-" + kind, text: text });
  }

  function renderVendors(vendors) {
    const rows = vendors.map(function (v) {
      const circuitCell = el("td", {}, badge(v.circuit, "circuit-" + v.circuit));
      // A vendor whose preparation (e.g. fetching Replicate's webhook secret) still fails:
      // its webhooks get 503 until the background retry succeeds.
      const notReady = v.ready === false ? " (not ready: " + (v.prepare_error || "?") + ")" : "";
      const name = v.vendor + (v.configured ? "" : " (not configured)") + notReady;
      const paused = !!v.paused;
      const toggle = el("button", {
        className: "secondary small", type: "button", text: paused ? "Resume" : "Pause",
        dataset: { testid: paused ? "vendor-resume" : "vendor-pause" },
      });
      toggle.title = paused ? "Let every process call " + v.vendor + " again"
        : "Stop every call to " + v.vendor + ": new tasks take the next route or wait, polls stop";
      toggle.addEventListener("click", function () { setPaused(v.vendor, !paused, toggle); });
      const lastError = cell(v.last_error ? v.last_error + " (" + T.formatTime(v.last_error_at) + ")"
        : "", "wrap");
      lastError.dataset.testid = "vendor-last-error";
      return el("tr", {
        dataset: { testid: "vendor", vendor: v.vendor, circuit: v.circuit, paused: String(paused) },
      },
        cell(name), circuitCell, cell(String(v.failures)),
        cell(v.open_until ? T.formatTime(v.open_until) : ""),
        cell(v.blocked_until ? T.formatTime(v.blocked_until) : ""),
        el("td", { dataset: { testid: "results-expired" },
                   text: v.results_expired_last_day + " / " + v.results_expired }),
        lastError,
        v.configured ? el("td", {}, toggle) : cell(""));
    });
    if (!rows.length) rows.push(el("tr", {}, el("td", { text: "No vendor is configured." })));
    $("vendors").replaceChildren(...rows);
  }

  // Keyed by delivery id, so a replay button never vanishes under the pointer for nothing.
  function renderDeadLetters(letters) {
    const list = $("dead-letters");
    const existing = new Map();
    for (const child of list.children) existing.set(child.dataset.deliveryId, child);
    const wanted = letters.map(function (d) {
      const id = String(d.id);
      const node = existing.get(id) || buildDeadLetter(d);
      existing.delete(id);
      return node;
    });
    for (const stale of existing.values()) stale.remove();
    wanted.forEach(function (node, i) {
      if (list.children[i] !== node) list.insertBefore(node, list.children[i] || null);
    });
    $("dead-count").textContent = String(letters.length);
    $("dead-empty").hidden = letters.length > 0;
  }

  function buildDeadLetter(d) {
    const replay = el("button", {
      className: "secondary small", type: "button", text: "Replay",
      dataset: { testid: "replay" },
    });
    replay.addEventListener("click", function () { replayDelivery(d.id, replay); });
    return el("li", {
      className: "dead-letter",
      dataset: { testid: "dead-letter", deliveryId: String(d.id) },
    },
    el("div", { className: "dead-letter-main" },
      el("div", { className: "dead-letter-title" },
        el("strong", { text: d.vendor }),
        el("code", { text: d.delivery_id })),
      el("div", { className: "muted small", text: "task " + (d.task_id || "unknown") + " · " +
        d.bytes + " bytes · " + T.formatTime(d.received_at) }),
      el("div", { className: "dead-letter-error", text: d.error || "no error recorded" })),
    replay);
  }

  async function replayDelivery(id, button) {
    button.disabled = true;
    button.textContent = "Replaying…";
    try {
      const result = await call("/admin/api/deliveries/" + encodeURIComponent(id) + "/replay",
        { method: "POST" });
      showNotice("Delivery " + result.id + ": " + result.status + " — " + result.message,
        result.status === "rejected");
      T.clearError();
    } catch (err) {
      if (err.status === 401) {
        signOut();
        T.showError("The admin key is no longer valid. Please sign in again.");
        return;
      }
      T.showError("Replay failed: " + T.describe(err));
    }
    button.disabled = false;
    button.textContent = "Replay";
    refreshNow();
  }

  function renderStuck(tasks, silentAfter) {
    const rows = tasks.map(function (t) {
      const why = { overdue: "past deadline", retrying: "retrying registration" }[t.reason] ||
        "silent";
      const lastError = cell(t.last_error || "", "wrap");
      lastError.dataset.testid = "last-error";
      return el("tr", {
        dataset: { testid: "stuck-task", taskId: t.id, status: t.status, reason: t.reason },
      },
        el("td", {}, taskId(t.id)),
        cell(t.email),
        el("td", {}, badge(t.status, t.status)),
        cell(t.progress + "%"),
        cell(why, t.reason === "overdue" ? "danger" : "warning"),
        cell(T.formatTime(t.updated_at), "time"),
        cell(T.formatTime(t.deadline_at), "time"),
        lastError,
        el("td", {}, openButton(t.id)));
    });
    $("stuck").replaceChildren(...rows);
    $("stuck-count").textContent = String(tasks.length);
    $("stuck-empty").hidden = tasks.length > 0;
    $("stuck").closest(".table-wrap").hidden = tasks.length === 0;
    if (silentAfter) {
      $("stuck-hint").textContent = "Open tasks past their deadline, or with no change for " +
        T.formatDuration(silentAfter) + ".";
    }
  }

  function renderRefunds(refunds) {
    const rows = refunds.map(function (r) {
      return el("tr", { dataset: { testid: "refund", taskId: r.task_id } },
        el("td", {}, taskId(r.task_id)),
        cell(r.email),
        cell("+" + r.amount),
        Object.assign(cell(r.error_code || r.task_status), { title: r.error_detail || "" }),
        cell(T.formatTime(r.created_at), "time"));
    });
    $("refunds").replaceChildren(...rows);
    $("refunds-empty").hidden = refunds.length > 0;
    $("refunds").closest(".table-wrap").hidden = refunds.length === 0;
  }

  function renderUsers(users) {
    const rows = users.map(function (u) {
      return el("tr", { dataset: { testid: "user-credits", email: u.email } },
        cell(u.email), cell(String(u.balance), "num"), cell(String(u.active_tasks), "num"));
    });
    $("users").replaceChildren(...rows);
    $("users-empty").hidden = users.length > 0;
    $("users").closest(".table-wrap").hidden = users.length === 0;
  }

  function renderClientWebhooks(panel) {
    const hosts = panel.failing_destinations || [];
    const rows = hosts.map(function (d) {
      return el("tr", { dataset: { testid: "webhook-destination", host: d.host } },
        el("td", {}, el("code", { text: d.host })),
        cell(String(d.failed), d.failed ? "danger" : "num"),
        cell(String(d.gone), "num"),
        cell(String(d.retrying), d.retrying ? "warning" : "num"),
        cell(d.last_answer || ""),
        cell(d.last_at ? T.formatTime(d.last_at) : "", "time"));
    });
    $("webhook-destinations").replaceChildren(...rows);
    $("webhook-destinations-empty").hidden = hosts.length > 0;
    $("webhook-destinations").closest(".table-wrap").hidden = hosts.length === 0;
    $("webhooks-pending").textContent = String(panel.pending || 0);
    const list = $("webhook-events");
    const existing = new Map();
    for (const child of list.children) existing.set(child.dataset.eventId, child);
    const wanted = (panel.failed_events || []).map(function (e) {
      const id = String(e.id);
      let node = existing.get(id);
      if (!node || node.dataset.state !== e.state) node = buildWebhookEvent(e);
      existing.delete(id);
      return node;
    });
    for (const stale of existing.values()) stale.remove();
    wanted.forEach(function (node, i) {
      if (list.children[i] !== node) list.insertBefore(node, list.children[i] || null);
    });
  }

  function buildWebhookEvent(e) {
    const replay = el("button", {
      className: "secondary small", type: "button", text: "Replay",
      dataset: { testid: "webhook-replay" },
    });
    replay.addEventListener("click", function () { replayWebhook(e.id, replay); });
    const answer = e.last_status ? "HTTP " + e.last_status : (e.last_error || "no answer yet");
    const when = e.next_attempt_at ? "next try " + T.formatTime(e.next_attempt_at)
      : T.formatTime(e.updated_at);
    return el("li", {
      className: "dead-letter",
      dataset: { testid: "webhook-event", eventId: String(e.id), state: e.state },
    },
    el("div", { className: "dead-letter-main" },
      el("div", { className: "dead-letter-title" },
        el("strong", { text: e.state + " · " + e.event }),
        el("code", { text: e.webhook_id })),
      el("div", { className: "muted small", text: "task " + e.task_id + " · " + e.url +
        " · " + e.attempts + " attempt(s) · " + when }),
      el("div", { className: "dead-letter-error", text: answer })),
    replay);
  }

  async function replayWebhook(id, button) {
    button.disabled = true;
    button.textContent = "Replaying…";
    try {
      await call("/admin/api/webhooks/" + encodeURIComponent(id) + "/replay", { method: "POST" });
      showNotice("Webhook event " + id + " will be sent again now.", false);
      T.clearError();
    } catch (err) {
      if (err.status === 401) {
        signOut();
        T.showError("The admin key is no longer valid. Please sign in again.");
        return;
      }
      T.showError("Replay failed: " + T.describe(err));
    }
    button.disabled = false;
    button.textContent = "Replay";
    refreshNow();
  }

  // ---- acting: find, open, cancel, retry, pause, bulk replay (issue 17.3) ------------------

  function openButton(id) {
    const button = el("button", {
      className: "secondary small", type: "button", text: "Open",
      dataset: { testid: "open-task", taskId: id },
    });
    button.addEventListener("click", function () { openTask(id); });
    return button;
  }

  // One place for what every action does with a failure.
  async function act(what, work) {
    try {
      const answer = await work();
      T.clearError();
      return answer;
    } catch (err) {
      if (err.status === 401) {
        signOut();
        T.showError("The admin key is no longer valid. Please sign in again.");
      } else {
        T.showError(what + ": " + T.describe(err));
      }
      return null;
    }
  }

  async function searchTasks(event) {
    if (event) event.preventDefault();
    const q = $("task-search").value.trim();
    const status = $("task-search-status").value;
    const query = new URLSearchParams();
    if (q) query.set("q", q);
    if (status) query.set("status", status);
    $("task-results").setAttribute("aria-busy", "true");
    const answer = await act("Search failed", function () {
      return call("/admin/api/tasks?" + query.toString());
    });
    $("task-results").setAttribute("aria-busy", "false");
    if (!answer) return;
    const rows = answer.data.map(function (t) {
      return el("tr", { dataset: { testid: "task-row", taskId: t.id, status: t.status } },
        el("td", {}, taskId(t.id)),
        el("td", {}, badge(t.status + (t.refunded ? " · refunded" : ""), t.status)),
        cell(t.vendor), cell(t.model, "wrap"),
        cell(T.formatTime(t.created_at), "time"),
        el("td", {}, openButton(t.id)));
    });
    $("task-results").replaceChildren(...rows);
    $("task-results-empty").hidden = rows.length > 0;
  }

  async function openTask(id) {
    const task = await act("Could not open the task", function () {
      return call("/admin/api/tasks/" + encodeURIComponent(id));
    });
    if (task) showTask(task);
  }

  function showTask(task) {
    const box = $("task-detail");
    box.dataset.taskId = task.id;
    box.dataset.status = task.status;
    $("detail-id").textContent = task.id;
    const owner = task.owner ? task.owner.email + " (" + task.owner.id + ")" : "—";
    const facts = [
      ["Status", task.status + (task.refunded ? " (refunded)" : ""), "task-status"],
      ["Owner", owner, "task-owner"],
      ["Model", task.model + " at " + task.vendor + " (" + task.vendor_model + ")", "task-model"],
      ["Vendor job", task.vendor_task_id || "—", "task-vendor-job"],
      ["Progress", task.progress + "%", "task-progress"],
      ["Cost", String(task.cost), "task-cost"],
      ["Input", JSON.stringify(task.input), "task-input"],
      ["Created", T.formatTime(task.created_at), "task-created"],
      ["Deadline", T.formatTime(task.deadline_at), "task-deadline"],
      ["Attempts", String(task.attempts), "task-attempts"],
      ["Last error", task.last_error || "—", "task-last-error"],
      ["Error", task.error ? JSON.stringify(task.error) : "—", "task-error"],
    ];
    $("detail-facts").replaceChildren(...facts.flatMap(function (f) {
      return [el("dt", { text: f[0] }), el("dd", { text: f[1], dataset: { testid: f[2] } })];
    }));
    $("detail-events").replaceChildren(...task.events.map(function (e) {
      return el("tr", { dataset: { testid: "task-event", to: e.to_status } },
        cell(T.formatTime(e.created_at), "time"), cell(e.from_status), cell(e.to_status),
        cell(e.applied ? "yes" : "no (" + e.cause + ")"), cell(e.cause, "wrap"));
    }));
    $("detail-deliveries").replaceChildren(...task.deliveries.map(function (d) {
      return el("tr", { dataset: { testid: "task-delivery" } },
        cell(String(d.id)), cell(d.vendor), cell(d.status), cell(d.outcome || ""),
        cell(T.formatTime(d.received_at), "time"), cell(d.error || "", "wrap"));
    }));
    $("detail-ledger").replaceChildren(...task.ledger.map(function (r) {
      return el("tr", { dataset: { testid: "task-ledger-row", kind: r.kind } },
        cell(r.kind), cell((r.amount > 0 ? "+" : "") + r.amount, "num"), cell(r.note || ""),
        cell(T.formatTime(r.created_at), "time"));
    }));
    const cancelable = ["pending", "submitted", "processing"].indexOf(task.status) >= 0;
    $("task-cancel").hidden = !cancelable;
    $("task-retry").hidden = ["pending", "storing"].indexOf(task.status) < 0;
    box.hidden = false;
    box.scrollIntoView({ block: "nearest" });
  }

  async function cancelOpenTask() {
    const id = $("task-detail").dataset.taskId;
    if (!id || !window.confirm("Cancel " + id + " and refund its owner?")) return;
    const button = $("task-cancel");
    button.disabled = true;
    const done = await act("Cancel failed", function () {
      return call("/admin/api/tasks/" + encodeURIComponent(id) + "/cancel", { method: "POST" });
    });
    button.disabled = false;
    if (done) showNotice("Task " + done.id + " canceled" + (done.refunded ? " and refunded." : "."));
    await openTask(id);
    refreshNow();
  }

  async function retryOpenTask() {
    const id = $("task-detail").dataset.taskId;
    if (!id) return;
    const button = $("task-retry");
    button.disabled = true;
    const done = await act("Retry refused", function () {
      return call("/admin/api/tasks/" + encodeURIComponent(id) + "/retry", { method: "POST" });
    });
    button.disabled = false;
    if (done) showNotice("Task " + done.id + ": its " + done.retrying + " is retried now.");
    await openTask(id);
    refreshNow();
  }

  async function setPaused(vendor, pause, button) {
    if (pause && !window.confirm("Pause " + vendor + "? No process will call it until resumed.")) {
      return;
    }
    button.disabled = true;
    const done = await act((pause ? "Pause" : "Resume") + " failed", function () {
      return call("/admin/api/vendors/" + encodeURIComponent(vendor) + (pause ? "/pause" : "/resume"),
        { method: "POST" });
    });
    button.disabled = false;
    if (done) showNotice(vendor + (pause ? " is paused." : " is resumed."));
    refreshNow();
  }

  function replaySince() {
    const value = $("replay-since").value;
    if (!value) return null;
    const date = new Date(value); // datetime-local: the operator's local time
    return isNaN(date.getTime()) ? null : date.toISOString();
  }

  async function previewReplay() {
    const since = replaySince();
    if (!since) {
      T.showError("Choose the time to replay dead letters from.");
      return;
    }
    const answer = await act("Count failed", function () {
      return call("/admin/api/deliveries/replay", {
        method: "POST", body: { since: since, preview: true },
      });
    });
    if (!answer) return;
    $("replay-count").textContent = answer.count + (answer.count === 1 ? " dead letter" : " dead letters");
    $("replay-all").disabled = answer.count === 0;
    $("replay-all").dataset.since = since;
  }

  async function replayAll() {
    const since = $("replay-all").dataset.since;
    if (!since) return;
    const button = $("replay-all");
    button.disabled = true;
    const answer = await act("Replay failed", function () {
      return call("/admin/api/deliveries/replay", { method: "POST", body: { since: since } });
    });
    if (answer) {
      const outcomes = Object.entries(answer.outcomes || {}).map(function (pair) {
        return pair[1] + " " + pair[0];
      }).join(", ");
      showNotice("Replayed " + answer.replayed + " dead letters" + (outcomes ? ": " + outcomes : "") + ".");
      $("replay-count").textContent = "";
    }
    refreshNow();
  }

  function showNotice(message, warn) {
    const box = $("notice");
    box.textContent = message;
    box.classList.toggle("warn", !!warn);
    box.hidden = false;
  }

  function hideNotice() {
    $("notice").hidden = true;
  }

  // ---- start --------------------------------------------------------------------------------

  function start() {
    $("signin-form").addEventListener("submit", function (event) {
      event.preventDefault();
      const key = $("admin-key").value.trim();
      if (!key) {
        T.showError("Enter the admin key to sign in.");
        return;
      }
      signIn(key, true);
    });
    $("sign-out").addEventListener("click", signOut);
    $("task-search-form").addEventListener("submit", searchTasks);
    $("task-cancel").addEventListener("click", cancelOpenTask);
    $("task-retry").addEventListener("click", retryOpenTask);
    $("task-close").addEventListener("click", function () { $("task-detail").hidden = true; });
    $("replay-preview").addEventListener("click", previewReplay);
    $("replay-all").addEventListener("click", replayAll);
    $("replay-since").addEventListener("change", function () {
      $("replay-all").disabled = true;
      $("replay-count").textContent = "";
    });
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden && state.key) refreshNow();
    });
    const saved = sessionStorage.getItem(KEY_STORAGE);
    if (saved) {
      $("signin").hidden = true;
      signIn(saved, false);
    } else {
      showSignIn();
    }
  }

  start();
})();
