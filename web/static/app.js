// The client page: sign in with an API key, submit prompts, follow tasks live.
// It uses only the public client API (docs/API.md "Client API"), like any other client would.
"use strict";

(function () {
  const T = window.Taskhook;
  const el = T.el;
  const $ = T.byId;

  const KEY_STORAGE = "taskhook.apiKey";
  const TERMINAL = new Set(["completed", "failed", "canceled"]);
  const RANK = { pending: 0, submitted: 1, processing: 2, storing: 3, completed: 4, failed: 4, canceled: 4 };
  const STATUS_LABEL = {
    pending: "Queued", submitted: "Submitted", processing: "Generating", storing: "Saving",
    completed: "Done", failed: "Failed", canceled: "Canceled",
  };
  // Browsers open about six connections per host over HTTP/1.1; keep room for ordinary calls.
  const MAX_STREAMS = 3;
  const POLL_MS = 2000;
  const IDLE_POLL_MS = 8000;
  const HISTORY_PAGE = 20;
  const ACTIVE_PAGE = 100;

  const state = {
    key: null,
    session: 0, // bumped on sign-out so late answers of an old session are ignored
    tasks: new Map(), // id -> {data, node, stream, imageRetried}
    nextCursor: null,
    pollTimer: null,
    pollPausedUntil: 0,
    streamsBroken: false, // the events endpoint refused us: poll instead
    submissions: new Map(), // "what" -> {body, key}: submissions not yet answered with a task
  };

  function call(path, options) {
    return T.request(path, state.key, options);
  }

  // ---- signing in and out -------------------------------------------------------------------

  async function signIn(key, typed) {
    const session = ++state.session;
    state.key = key;
    let me;
    try {
      me = await call("/v1/me");
    } catch (err) {
      if (session !== state.session) return;
      if (err.status === 401) {
        state.key = null;
        sessionStorage.removeItem(KEY_STORAGE);
        T.showError(typed ? "That API key was not accepted. " + T.describe(err)
          : "Your saved API key is no longer valid. Please sign in again.");
        showSignIn();
      } else {
        // The server is unreachable or busy: keep the key and try again shortly (and say so:
        // this is the one call the page retries by itself).
        T.showError((err.status === 0 ? "Could not reach the server." : T.describe(err)) +
          " Retrying shortly…");
        setTimeout(function () { if (session === state.session) signIn(key, false); }, 3000);
      }
      return;
    }
    if (session !== state.session) return;
    sessionStorage.setItem(KEY_STORAGE, key);
    T.clearError();
    showAccount(me);
    $("signin").hidden = true;
    $("workspace").hidden = false;
    $("api-key").value = "";
    await Promise.all([loadModels(session), loadTasks(session)]);
    schedulePoll(session, 0);
  }

  // ---- the model catalogue ------------------------------------------------------------------
  // What this deployment serves (GET /v1/models): a route's name is posted as it is, so routes,
  // failover and route prices apply; a vendor's own model is posted with its vendor.

  async function loadModels(session) {
    const select = $("model");
    let answer;
    try {
      answer = await call("/v1/models");
    } catch (err) {
      if (session !== state.session || handleAuthLoss(err)) return;
      T.showError("Could not load the models: " + T.describe(err));
      return;
    }
    if (session !== state.session) return;
    const previous = select.value;
    const options = (answer.data || []).map(function (model) {
      const available = model.vendors.some(function (v) { return v.available; });
      const price = model.price + (model.price === 1 ? " credit" : " credits");
      const option = el("option", {
        text: model.description + " · " + price + (available ? "" : " · busy, will wait"),
        dataset: { price: String(model.price) },
      });
      option.value = model.id;
      if (!model.route && model.vendors.length) option.dataset.vendor = model.vendors[0].vendor;
      return option;
    });
    select.replaceChildren.apply(select, options);
    if (options.some(function (o) { return o.value === previous; })) select.value = previous;
    select.setAttribute("aria-busy", "false");
    $("submit").disabled = options.length === 0;
    if (!options.length) T.showError("This service offers no models right now.");
  }

  function signOut() {
    state.session++;
    state.key = null;
    sessionStorage.removeItem(KEY_STORAGE);
    for (const entry of state.tasks.values()) closeStream(entry);
    state.tasks.clear();
    state.nextCursor = null;
    state.streamsBroken = false;
    state.submissions.clear();
    clearTimeout(state.pollTimer);
    $("tasks").replaceChildren();
    $("model").replaceChildren();
    $("model").setAttribute("aria-busy", "true");
    $("account").hidden = true;
    T.clearError();
    showSignIn();
  }

  function showSignIn() {
    $("workspace").hidden = true;
    $("account").hidden = true;
    $("signin").hidden = false;
    $("api-key").focus();
  }

  function showAccount(me) {
    $("who").textContent = me.email;
    $("credits").textContent = me.credits + (me.credits === 1 ? " credit" : " credits");
    $("account").hidden = false;
  }

  let meTimer = null;
  function refreshCredits() {
    clearTimeout(meTimer);
    const session = state.session;
    meTimer = setTimeout(async function () {
      try {
        const me = await call("/v1/me");
        if (session === state.session) showAccount(me);
      } catch (_err) {
        // Not worth a message: the next refresh will try again.
      }
    }, 300);
  }

  function handleAuthLoss(err) {
    if (err && err.status === 401) {
      signOut();
      T.showError("Your API key is no longer valid. Please sign in again.");
      return true;
    }
    return false;
  }

  // ---- loading tasks ------------------------------------------------------------------------

  async function loadTasks(session) {
    $("tasks").setAttribute("aria-busy", "true");
    try {
      // Every unfinished task, however old, so nothing in flight is ever hidden...
      let cursor = null;
      for (let page = 0; page < 5; page++) {
        const query = "/v1/tasks?status=active&limit=" + ACTIVE_PAGE +
          (cursor ? "&cursor=" + encodeURIComponent(cursor) : "");
        const answer = await call(query);
        if (session !== state.session) return;
        answer.data.forEach(upsert);
        cursor = answer.next_cursor;
        if (!cursor) break;
      }
      // ...then the newest page of history.
      const recent = await call("/v1/tasks?limit=" + HISTORY_PAGE);
      if (session !== state.session) return;
      recent.data.forEach(upsert);
      state.nextCursor = recent.next_cursor || null;
    } catch (err) {
      if (session !== state.session || handleAuthLoss(err)) return;
      T.showError("Could not load your tasks: " + T.describe(err));
    }
    if (session !== state.session) return;
    $("tasks").setAttribute("aria-busy", "false");
    updateChrome();
  }

  async function loadOlder() {
    if (!state.nextCursor) return;
    const session = state.session;
    const button = $("more");
    button.disabled = true;
    try {
      const answer = await call("/v1/tasks?limit=" + HISTORY_PAGE +
        "&cursor=" + encodeURIComponent(state.nextCursor));
      if (session !== state.session) return;
      answer.data.forEach(upsert);
      state.nextCursor = answer.next_cursor || null;
    } catch (err) {
      if (!handleAuthLoss(err)) T.showError(T.describe(err));
    } finally {
      button.disabled = false;
      updateChrome();
    }
  }

  function updateChrome() {
    $("empty").hidden = state.tasks.size > 0;
    $("more").hidden = !state.nextCursor;
    let active = 0;
    for (const entry of state.tasks.values()) if (!TERMINAL.has(entry.data.status)) active++;
    $("live").textContent = active ? active + " in progress" : "";
  }

  // ---- one task -----------------------------------------------------------------------------

  // Answers can arrive out of order (stream, poll, cancel); never step a task backwards.
  function isNewer(old, next) {
    if (TERMINAL.has(old.status)) return next.status === old.status && !old.result && !!next.result;
    const a = RANK[old.status] ?? -1;
    const b = RANK[next.status] ?? -1;
    return b > a || (b === a && (next.progress || 0) >= (old.progress || 0));
  }

  function upsert(task) {
    if (!task || typeof task.id !== "string") return;
    let entry = state.tasks.get(task.id);
    if (!entry) {
      entry = { data: task, node: buildTask(task), stream: null, imageRetried: false };
      state.tasks.set(task.id, entry);
      place(entry);
    } else if (isNewer(entry.data, task)) {
      entry.data = task;
    } else {
      return;
    }
    renderTask(entry);
    if (TERMINAL.has(task.status)) {
      closeStream(entry);
      if (task.refunded) refreshCredits();
      openStreams();
    } else {
      openStreams();
    }
    updateChrome();
  }

  // Newest first, as the API lists them: by creation time, then by id.
  function newerFirst(a, b) {
    const ta = Date.parse(a.created_at) || 0;
    const tb = Date.parse(b.created_at) || 0;
    if (ta !== tb) return tb - ta;
    return a.id < b.id ? 1 : a.id > b.id ? -1 : 0;
  }

  // Insert before the first task that sorts after this one.
  function place(entry) {
    const list = $("tasks");
    for (const child of list.children) {
      const other = state.tasks.get(child.dataset.taskId);
      if (other && newerFirst(entry.data, other.data) < 0) {
        list.insertBefore(entry.node, child);
        return;
      }
    }
    list.appendChild(entry.node);
  }

  function buildTask(task) {
    const node = el("li", { className: "task card", dataset: { testid: "task", taskId: task.id } });
    const prompt = task.input && typeof task.input.prompt === "string" ? task.input.prompt : "";
    const figure = el("div", { className: "task-figure" },
      el("div", { className: "placeholder", text: "…" }));
    const body = el("div", { className: "task-body" },
      el("div", { className: "task-head" },
        el("span", { className: "status" }),
        el("span", { className: "task-actions" })),
      el("p", { className: "prompt", text: prompt || "(no prompt)" }),
      el("div", { className: "progress-row" },
        el("progress", { className: "bar" }),
        el("span", { className: "percent", dataset: { testid: "progress" } })),
      el("p", { className: "meta" }),
      el("p", { className: "task-message", dataset: { testid: "task-error" } }));
    node.append(figure, body);
    node.querySelector("progress").max = 100;
    return node;
  }

  function renderTask(entry) {
    const task = entry.data;
    const node = entry.node;
    const done = TERMINAL.has(task.status);
    node.dataset.status = task.status;
    node.classList.toggle("is-active", !done);

    const badge = node.querySelector(".status");
    badge.textContent = STATUS_LABEL[task.status] || task.status;
    badge.className = "status status-" + task.status;
    badge.title = task.status;

    const percent = Math.max(0, Math.min(100,
      task.status === "completed" ? 100 : Number(task.progress) || 0));
    const bar = node.querySelector("progress");
    bar.value = percent;
    node.querySelector(".percent").textContent = percent + "%";

    const meta = [task.model, "started " + T.formatTime(task.created_at)];
    const created = T.parseTime(task.created_at);
    const finished = T.parseTime(task.completed_at) || (done ? T.parseTime(task.updated_at) : null);
    if (created && finished && task.status !== "canceled") {
      meta.push("took " + T.formatDuration((finished - created) / 1000));
    }
    if (task.cost !== undefined) meta.push(task.cost + (task.cost === 1 ? " credit" : " credits"));
    if (task.refunded) meta.push("refunded");
    node.querySelector(".meta").textContent = meta.join(" · ");

    const message = node.querySelector(".task-message");
    if (task.status === "failed") {
      const error = task.error || {};
      message.textContent = (error.message || "The task failed.") +
        (error.code ? " (" + error.code + ")" : "");
    } else if (task.status === "canceled") {
      message.textContent = "Canceled." + (task.refunded ? " Your credits were refunded." : "");
    } else {
      message.textContent = "";
    }
    message.hidden = !message.textContent;

    const actions = node.querySelector(".task-actions");
    let cancel = actions.querySelector("[data-testid=cancel]");
    // Once the vendor has finished (storing) the API refuses a cancel: offer none.
    const cancelable = !done && task.status !== "storing";
    if (cancelable && !cancel) {
      cancel = el("button", {
        className: "secondary small", type: "button", text: "Cancel",
        dataset: { testid: "cancel" },
      });
      cancel.addEventListener("click", function () { cancelTask(entry, cancel); });
      actions.appendChild(cancel);
    } else if (!cancelable && cancel) {
      cancel.remove();
    }
    renderFollowUps(entry);

    renderFigure(entry);
  }

  // Upscale / vary one image of a finished grid: vendors with follow-up actions only.
  const FOLLOW_UPS = {
    midjourney: [
      ["upscale", 1], ["upscale", 2], ["upscale", 3], ["upscale", 4],
      ["variation", 1], ["variation", 2], ["variation", 3], ["variation", 4],
    ],
  };

  function renderFollowUps(entry) {
    const task = entry.data;
    const offered = task.status === "completed" ? FOLLOW_UPS[task.vendor] : null;
    if (!offered || entry.node.querySelector(".follow-ups")) return;
    const row = el("div", { className: "follow-ups" });
    offered.forEach(function (pair) {
      const button = el("button", {
        className: "secondary small", type: "button",
        text: (pair[0] === "upscale" ? "U" : "V") + pair[1],
        dataset: { testid: "action", action: pair[0], index: String(pair[1]) },
      });
      button.title = pair[0] + " image " + pair[1] + " (a new task, charged)";
      button.addEventListener("click", function () { followUp(entry, button, pair[0], pair[1]); });
      row.appendChild(button);
    });
    entry.node.querySelector(".task-body").appendChild(row);
  }

  async function followUp(entry, button, action, index) {
    button.disabled = true;
    const path = "/v1/tasks/" + encodeURIComponent(entry.data.id) + "/actions";
    const body = { action: action, index: index };
    try {
      upsert(await call(path, {
        method: "POST",
        headers: { "Idempotency-Key": submissionKey(path, body) },
        body: body,
      }));
      state.submissions.delete(path);
      T.clearError();
      refreshCredits();
    } catch (err) {
      if (!handleAuthLoss(err)) T.showError("Could not " + action + ": " + T.describe(err));
    } finally {
      button.disabled = false;
    }
  }

  function renderFigure(entry) {
    const task = entry.data;
    const figure = entry.node.querySelector(".task-figure");
    const url = task.status === "completed" && task.result ? task.result.url : null;
    if (T.isHttpUrl(url)) {
      if (figure.querySelector("img")) return; // presigned URLs differ per answer; keep the first
      const img = el("img", { className: "result", dataset: { testid: "result" } });
      img.alt = task.input && typeof task.input.prompt === "string" ? task.input.prompt : "result";
      img.decoding = "async";
      img.addEventListener("error", function () { retryImage(entry, img); });
      img.src = url;
      const link = el("a", { className: "result-link", title: "Open the full image" }, img);
      link.href = url;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      figure.replaceChildren(link);
      figure.classList.add("has-image");
    } else {
      const symbol = { failed: "✕", canceled: "–" }[task.status] || "";
      const placeholder = figure.querySelector(".placeholder") ||
        figure.appendChild(el("div", { className: "placeholder" }));
      placeholder.textContent = symbol;
      placeholder.classList.toggle("working", !TERMINAL.has(task.status));
    }
  }

  // A presigned URL that expired (page left open for long): ask for a fresh one, once.
  async function retryImage(entry, img) {
    if (entry.imageRetried) return;
    entry.imageRetried = true;
    try {
      const task = await call("/v1/tasks/" + encodeURIComponent(entry.data.id));
      if (task.result && T.isHttpUrl(task.result.url)) {
        img.src = task.result.url;
        img.parentElement.href = task.result.url;
      }
    } catch (_err) {
      // The broken image says enough.
    }
  }

  async function cancelTask(entry, button) {
    button.disabled = true;
    button.textContent = "Canceling…";
    try {
      upsert(await call("/v1/tasks/" + encodeURIComponent(entry.data.id) + "/cancel",
        { method: "POST" }));
      T.clearError();
      refreshCredits();
    } catch (err) {
      if (handleAuthLoss(err)) return;
      if (err.status === 409) {
        T.showError("This task had already finished, so it could not be canceled.");
        await refreshOne(entry.data.id);
      } else {
        T.showError("Could not cancel: " + T.describe(err));
      }
      button.disabled = false;
      button.textContent = "Cancel";
    }
  }

  async function refreshOne(id) {
    try {
      upsert(await call("/v1/tasks/" + encodeURIComponent(id)));
    } catch (err) {
      handleAuthLoss(err);
    }
  }

  // ---- live updates -------------------------------------------------------------------------
  // Up to MAX_STREAMS of the newest unfinished tasks follow Server-Sent Events; everything else
  // unfinished is refreshed by one list call every POLL_MS. EventSource cannot send headers, so
  // the key goes in the query string, as API.md allows for this endpoint.

  function openStreams() {
    if (state.streamsBroken || !window.EventSource || !state.key) return;
    let open = 0;
    const waiting = [];
    for (const entry of state.tasks.values()) {
      if (entry.stream) open++;
      else if (!TERMINAL.has(entry.data.status)) waiting.push(entry);
    }
    waiting.sort(function (a, b) { return newerFirst(a.data, b.data); });
    for (const entry of waiting) {
      if (open >= MAX_STREAMS) break;
      openStream(entry);
      open++;
    }
  }

  function openStream(entry) {
    const url = "/v1/tasks/" + encodeURIComponent(entry.data.id) + "/events?key=" +
      encodeURIComponent(state.key);
    const stream = new EventSource(url);
    entry.stream = stream;
    let heard = false;
    stream.addEventListener("task", function (event) {
      heard = true;
      let task;
      try {
        task = JSON.parse(event.data);
      } catch (_err) {
        return;
      }
      upsert(task);
    });
    stream.addEventListener("error", function () {
      if (stream.readyState !== EventSource.CLOSED) return; // reconnecting by itself
      // Refused outright (no such endpoint, key not accepted): fall back to polling.
      if (!heard) state.streamsBroken = true;
      closeStream(entry);
      if (!TERMINAL.has(entry.data.status)) refreshOne(entry.data.id);
      openStreams();
    });
  }

  function closeStream(entry) {
    if (entry.stream) {
      entry.stream.close();
      entry.stream = null;
    }
  }

  function schedulePoll(session, delay) {
    clearTimeout(state.pollTimer);
    state.pollTimer = setTimeout(function () { poll(session); }, delay);
  }

  async function poll(session) {
    if (session !== state.session) return;
    try {
      if (Date.now() >= state.pollPausedUntil) await pollOnce(session);
    } catch (err) {
      if (session !== state.session || handleAuthLoss(err)) return;
      if (err.status === 429) state.pollPausedUntil = Date.now() + (err.retryAfter || 5) * 1000;
    }
    if (session !== state.session) return;
    // Quick while something unfinished has no stream; slower otherwise, just to notice tasks
    // started elsewhere.
    let waiting = false;
    for (const entry of state.tasks.values()) {
      if (!entry.stream && !TERMINAL.has(entry.data.status)) waiting = true;
    }
    schedulePoll(session, waiting ? POLL_MS : IDLE_POLL_MS);
  }

  async function pollOnce(session) {
    const unstreamed = [];
    for (const entry of state.tasks.values()) {
      if (!entry.stream && !TERMINAL.has(entry.data.status)) unstreamed.push(entry.data.id);
    }
    // The active list also brings in tasks started elsewhere (another tab, the API).
    const answer = await call("/v1/tasks?status=active&limit=" + ACTIVE_PAGE);
    if (session !== state.session) return;
    const seen = new Set();
    let discovered = false;
    for (const task of answer.data) {
      seen.add(task.id);
      discovered = discovered || !state.tasks.has(task.id);
      upsert(task);
    }
    if (discovered) refreshCredits(); // started elsewhere, and charged there
    // Whatever left the active list has finished: fetch its final state.
    const finished = unstreamed.filter(function (id) { return !seen.has(id); }).slice(0, 10);
    await Promise.all(finished.map(refreshOne));
  }

  // ---- submitting ---------------------------------------------------------------------------

  async function submit(event) {
    event.preventDefault();
    const promptBox = $("prompt");
    const prompt = promptBox.value.trim();
    if (!prompt) {
      T.showError("Write a prompt first.");
      promptBox.focus();
      return;
    }
    const button = $("submit");
    button.disabled = true;
    button.textContent = "Starting…";
    const session = state.session;
    const body = requestFor($("model"), prompt);
    try {
      const task = await call("/v1/tasks", {
        method: "POST",
        // One key per submission: clicking again after an unanswered or refused attempt sends
        // the same request under the same key, so it can never start (or charge) a job twice.
        headers: { "Idempotency-Key": submissionKey("/v1/tasks", body) },
        body: body,
      });
      if (session !== state.session) return;
      state.submissions.delete("/v1/tasks"); // done: the next click is a new submission
      T.clearError();
      promptBox.value = "";
      upsert(task);
      refreshCredits();
    } catch (err) {
      if (!handleAuthLoss(err)) T.showError(T.describe(err));
    } finally {
      button.disabled = $("model").options.length === 0;
      button.textContent = "Generate";
    }
  }

  // The Idempotency-Key of this submission: the previous attempt's while the request is the
  // same one (an answer that never came may still have created the task), a new one otherwise.
  function submissionKey(path, body) {
    const text = JSON.stringify(body);
    let known = state.submissions.get(path);
    if (!known || known.body !== text) {
      known = { body: text, key: T.randomToken() };
      state.submissions.set(path, known);
    }
    return known.key;
  }

  // A model option may pin a vendor (data-vendor): midjourney is only served by its proxy.
  function requestFor(select, prompt) {
    const option = select.options[select.selectedIndex];
    const body = { model: select.value, input: { prompt: prompt } };
    if (option && option.dataset.vendor) body.vendor = option.dataset.vendor;
    return body;
  }

  // ---- start --------------------------------------------------------------------------------

  function start() {
    $("signin-form").addEventListener("submit", function (event) {
      event.preventDefault();
      const key = $("api-key").value.trim();
      if (!key) {
        T.showError("Paste your API key to sign in.");
        return;
      }
      signIn(key, true);
    });
    $("sign-out").addEventListener("click", signOut);
    $("submit-form").addEventListener("submit", submit);
    $("prompt").addEventListener("keydown", function (event) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("submit-form").requestSubmit();
    });
    $("more").addEventListener("click", loadOlder);
    window.addEventListener("pagehide", function () {
      for (const entry of state.tasks.values()) closeStream(entry);
    });
    window.addEventListener("pageshow", function (event) {
      // Back from the back/forward cache: the streams were closed on the way out.
      if (event.persisted && state.key) {
        openStreams();
        schedulePoll(state.session, 0);
      }
    });

    const saved = sessionStorage.getItem(KEY_STORAGE);
    if (saved) {
      $("signin").hidden = true; // no flash of the form while the saved key is checked
      signIn(saved, false);
    } else {
      showSignIn();
    }
  }

  start();
})();
