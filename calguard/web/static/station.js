// The central station's live page: listens to the monitor (server-sent events), draws the
// unit, sounds the alarms, and sends people's actions. Nothing here decides what is safe:
// the order of the beds, the priorities, what sounds and every verdict on an action are
// the monitor's. What the page adds is what only it can know: that it lost the monitor.
"use strict";

(function () {
  const QUIET_MS = 3000; // no word from the monitor this long: say so (the monitor beats 1/s)
  const body = document.body;
  const zone = body.dataset.timezone || "UTC";
  const $ = (id) => document.getElementById(id);
  const esc = (text) =>
    String(text ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  const clockFormat = new Intl.DateTimeFormat("en-GB", {
    timeZone: zone, day: "2-digit", month: "short", hour: "2-digit", minute: "2-digit",
    second: "2-digit", hour12: false,
  });
  const timeFormat = new Intl.DateTimeFormat("en-GB", {
    timeZone: zone, hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
  });

  let state = null; // the latest ward state
  let heardAt = 0; // Date.now() of the latest message
  let wardAt = 0; // the monitor's time then (µs)
  let session = { user: null };
  let stopped = null; // the monitor said it stopped
  let lost = false; // the connection dropped
  const openedAt = Date.now();

  // -- time ---------------------------------------------------------------------------------

  function wardNow() {
    if (!state) return null;
    return wardAt + (Date.now() - heardAt) * 1000 * (state.speed || 1);
  }
  function local(iso, withDate) {
    if (!iso) return "-";
    const date = new Date(iso);
    return (withDate ? clockFormat : timeFormat).format(date);
  }
  function stamp(iso) {
    // local time, with UTC on hover
    return `<time datetime="${esc(iso)}" title="${esc(iso)} (UTC)">${esc(local(iso))}</time>`;
  }
  function span(seconds) {
    const s = Math.abs(seconds);
    if (s < 90) return `${Math.round(s)} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
    return `${Math.round(s / 86400)} days`;
  }
  function countdown(due) {
    if (!due) return "-";
    const left = (due.at_us - wardNow()) / 1e6;
    const text = left >= 0 ? `in ${span(left)}` : `OVERDUE ${span(left)}`;
    const cls = left >= 0 ? "due" : "overdue";
    return `<span class="${cls}" title="${esc(local(due.at, true))} (${esc(due.at)} UTC)">${text}</span>`;
  }
  function number(x) {
    if (x === 0) return "0";
    const digits = Math.abs(x) >= 100 ? 0 : Math.abs(x) >= 1 ? 2 : 3;
    return String(Number(x.toFixed(digits)));
  }

  // -- the feed -----------------------------------------------------------------------------

  function listen() {
    const source = new EventSource("/api/events");
    source.addEventListener("state", (event) => {
      const first = !state || lost || stopped;
      state = JSON.parse(event.data);
      heardAt = Date.now();
      wardAt = state.now_us;
      stopped = null;
      lost = false;
      if (first) loadSession();
      draw();
    });
    source.addEventListener("stopped", (event) => {
      stopped = JSON.parse(event.data);
      offline();
    });
    source.addEventListener("error", () => {
      lost = true;
      offline();
    });
  }

  function offline() {
    const banner = $("offline");
    const quiet = Date.now() - heardAt;
    const down = Boolean(stopped || lost || (state ? quiet : Date.now() - openedAt) > QUIET_MS);
    banner.hidden = !down;
    body.classList.toggle("offline", down);
    if (!down) return;
    const last = heardAt ? new Date(heardAt) : null;
    const when = last
      ? `last heard at ${timeFormat.format(last)} (${span(quiet / 1000)} ago); what is shown is as of then`
      : "not heard from since this page opened";
    const what = stopped ? "MONITOR STOPPED" : lost ? "MONITOR OFFLINE: connection lost" : "MONITOR SILENT";
    banner.innerHTML = `<b>${what}</b> ${esc(when)}. The ward is not being watched from this screen.`;
    CalguardSound.play("offline");
    showSound();
  }

  // -- drawing ------------------------------------------------------------------------------

  function draw() {
    $("offline").hidden = true;
    body.classList.remove("offline");
    $("clock").textContent = local(state.now, true);
    $("clock").title = `${state.now} (UTC)` + (state.speed !== 1 ? `, clock x${state.speed}` : "");
    drawBanners();
    if ($("beds")) drawBeds();
    if ($("alarms")) drawAlarms();
    if ($("audit")) drawAudit();
    CalguardSound.play(state.sound.priority);
    showSound();
  }

  function drawBanners() {
    $("banners").innerHTML = state.banners
      .map((b) => `<div class="banner p-${esc(b.priority)}" data-kind="${esc(b.kind)}"><b>${esc(b.label)}</b> ${esc(b.text)}</div>`)
      .join("");
  }

  function bar(share, over) {
    const width = Math.min(share, 1) * 100;
    return `<span class="bar${over ? " over" : ""}"><i data-width="${width.toFixed(1)}"></i></span>`;
  }

  function channelRow(ch) {
    const limits = state.limits;
    const over = ch.rate_ml_min > limits.rate_ml_min;
    const flags = [
      ch.offline ? "OFFLINE" : null,
      ch.pump_alarm ? `pump: ${ch.pump_alarm}` : null,
      ch.silent_for ? `silent ${ch.silent_for}` : null,
    ].filter(Boolean);
    return (
      `<div class="channel${ch.calcium ? " calcium" : ""}${over ? " over" : ""}" data-channel="${esc(ch.name)}">` +
      `<div class="what"><b>${esc(ch.name)}</b> ${ch.calcium ? '<abbr title="calcium">Ca</abbr> ' : ""}` +
      `<span class="drug">${esc(ch.drug)}</span> <span class="status">${esc(ch.status)}</span>` +
      (flags.length ? ` <span class="flag">${esc(flags.join(", "))}</span>` : "") + "</div>" +
      `<div class="rate" title="${Math.round(ch.share * 100)}% of the limit, ${number(limits.rate_ml_h)} ml/h (${number(limits.rate_ml_min)} ml/min)">` +
      `${bar(ch.share, over)}<span class="value">${number(ch.rate_ml_h)} ml/h · ${number(ch.rate_ml_min)} ml/min` +
      `${over ? ` OVER ${number(limits.rate_ml_h)}` : ""}</span></div></div>`
    );
  }

  function tile(bed) {
    const dose = bed.dose
      ? `<div class="dose" title="calcium in ${esc(state.limits.dose_window)} against ${esc(bed.dose.limit_text)}">` +
        `Ca ${esc(state.limits.dose_window)} ${bar(bed.dose.share, bed.dose.share > 1)}` +
        `<span class="value">${esc(bed.dose.text)} · ${Math.round(bed.dose.share * 100)}%</span></div>`
      : "";
    const lines = bed.lines
      .map(
        (line) =>
          `<div class="line"><div class="where"><b>${esc(line.line)}</b> ${esc(line.kind || "?")}` +
          `${line.site ? ", " + esc(line.site) : ""}</div>` +
          (line.site_check_due || line.rotation_due
            ? `<div class="timers">site check ${countdown(line.site_check_due)} · rotation ${countdown(line.rotation_due)}</div>`
            : "") +
          line.channels.map(channelRow).join("") + "</div>"
      )
      .join("");
    const worst = bed.worst || "ok";
    return (
      `<article class="tile p-${worst}" data-bed="${esc(bed.bed)}" data-worst="${worst}">` +
      `<header><a class="bed" href="/bed/${encodeURIComponent(bed.bed)}">${esc(bed.bed)}</a>` +
      `<span class="label">${esc(bed.label)}</span>` +
      `<span class="weight">${esc(bed.weight || "NO WEIGHT")}</span></header>` +
      (bed.headline ? `<p class="headline" title="${esc(bed.headline)}">${esc(bed.headline)}</p>` : "") +
      dose + lines + "</article>"
    );
  }

  function drawBeds() {
    let html = state.beds.map(tile).join("");
    if (state.unassigned.length) {
      html +=
        '<article class="tile p-ok unassigned" data-bed=""><header><span class="bed">NO DOCUMENTED LINE</span></header>' +
        state.unassigned.map(channelRow).join("") + "</article>";
    }
    if (!state.beds.length && !state.unassigned.length) {
      html = '<p class="empty">No bed documented yet - which does not mean a site is fine: look at it.</p>';
    }
    $("beds").innerHTML = html;
    const limits = state.limits;
    $("legend").textContent =
      `bars: each rate against the limit of ${number(limits.rate_ml_h)} ml/h (${number(limits.rate_ml_min)} ml/min); ` +
      `Ca ${limits.dose_window}: calcium given against ${limits.dose_text}. Beds: worst alarm first.`;
    for (const i of $("beds").querySelectorAll("i[data-width]")) i.style.width = `${i.dataset.width}%`;
  }

  function alarmState(a) {
    // HTML: the state in words, times local with UTC on hover
    const parts = [esc(a.state)];
    if (a.state === "acknowledged" && a.acknowledged_by) parts.push(`by ${esc(a.acknowledged_by)}`);
    if (a.state === "paused") parts.push(`until ${stamp(a.until)}` + (a.paused_by ? ` by ${esc(a.paused_by)}` : ""));
    if (a.state === "overridden") {
      parts.push(`until ${stamp(a.until)}` + (a.overridden_by ? ` by ${esc(a.overridden_by)}` : ""));
      if (a.override_reason) parts.push(`(${esc(a.override_reason)})`);
    }
    if (a.latched && a.state !== "latched") parts.push("latched");
    if (a.audience && a.audience !== "bedside") parts.push(`escalated to ${esc(a.audience)}`);
    return parts.join(" ");
  }

  function alarmInfo(a) {
    return (
      `<div class="head"><span class="label">${esc(a.label)}</span> <b>${esc(a.rule)}</b> ` +
      `<span class="subject">${esc(a.subject)}</span> ${stamp(a.raised)}</div>` +
      `<div class="message">${esc(a.message)}</div>` +
      `<div class="state" data-state="${esc(a.state)}">${alarmState(a)}</div>` +
      `<div class="id">${esc(a.alert)} · ${esc(a.category)}</div>`
    );
  }

  function actionsFor(li, a) {
    let box = li.querySelector(".actions");
    if (!box) {
      box = document.createElement("div");
      box.className = "actions";
      const reasons = state.library.override_reasons
        .map((r) => `<option value="${esc(r)}">${esc(r)}</option>`)
        .join("");
      box.innerHTML =
        '<button type="button" data-action="ack">acknowledge</button>' +
        `<button type="button" data-action="pause" title="audio pause (${esc(state.library.pause[a.priority])})">pause</button>` +
        '<button type="button" data-action="reset">reset</button>' +
        `<select class="reason" aria-label="override reason">${reasons}</select>` +
        `<button type="button" data-action="override" title="at most ${esc(state.library.override_max)}">override</button>` +
        '<output class="verdict"></output>';
      box.addEventListener("click", (event) => {
        const action = event.target.dataset && event.target.dataset.action;
        if (action) act(li.dataset.alert, action, li);
      });
      li.appendChild(box);
    }
    const show = {
      ack: !a.acknowledged_by && a.state !== "overridden",
      pause: a.annunciating,
      reset: a.latched && !a.condition,
      override: a.condition,
    };
    for (const [action, visible] of Object.entries(show)) {
      box.querySelector(`[data-action="${action}"]`).hidden = !visible;
    }
    box.querySelector(".reason").hidden = !show.override;
  }

  function drawAlarms() {
    const list = $("alarms");
    $("alarm-count").textContent = `(${state.alarms.length})`;
    const keep = new Set(state.alarms.map((a) => a.alert));
    for (const li of [...list.children]) if (!keep.has(li.dataset.alert)) li.remove();
    let previous = null;
    for (const a of state.alarms) {
      let li = list.querySelector(`li[data-alert="${CSS.escape(a.alert)}"]`);
      if (!li) {
        li = document.createElement("li");
        li.dataset.alert = a.alert;
        li.innerHTML = '<div class="info"></div>';
      }
      li.className = `alarm p-${a.priority}${a.annunciating ? " annunciating" : ""}`;
      li.dataset.state = a.state;
      li.dataset.rule = a.rule;
      const info = alarmInfo(a);
      const box = li.querySelector(".info");
      if (box.innerHTML !== info) box.innerHTML = info;
      actionsFor(li, a);
      const after = previous ? previous.nextSibling : list.firstChild;
      if (after !== li) list.insertBefore(li, after);
      previous = li;
    }
    if (!state.alarms.length) {
      list.innerHTML = '<li class="none">none - which does not mean a site is fine: look at it</li>';
    } else {
      const none = list.querySelector(".none");
      if (none) none.remove();
    }
  }

  function drawAudit() {
    $("audit").innerHTML = state.audit
      .map(
        (e) =>
          `<li class="${esc(e.kind)}" data-alert="${esc(e.alert)}" data-action="${esc(e.action)}">` +
          `${stamp(e.t)} <b>${esc(e.by || "?")}</b>${e.role ? " (" + esc(e.role) + ")" : ""} ` +
          `${esc(e.action)} ${esc(e.alert)}${e.reason ? " (" + esc(e.reason) + ")" : ""}: ` +
          `<span class="verdict">${esc(e.verdict)}</span></li>`
      )
      .join("");
  }

  function showSound() {
    const button = $("sound");
    const playing = CalguardSound.playing();
    const allowed = CalguardSound.state();
    let text;
    if (allowed === "unsupported") text = "SOUND OFF: this browser has no Web Audio";
    else if (allowed === "blocked") text = "SOUND OFF: the browser blocks sound - click to allow";
    else if (playing === "offline") text = "sound on: monitor lost";
    else if (playing) text = `sound on: ${playing.toUpperCase()} alarm sounding`;
    else text = `sound on: quiet (${state ? state.sound.why : "no alarm"})`;
    button.textContent = text;
    button.dataset.sound = allowed;
    button.dataset.playing = playing || "";
    button.classList.toggle("blocked", allowed !== "on");
  }

  // -- people ------------------------------------------------------------------------------

  async function loadSession() {
    try {
      const answer = await fetch("/api/session", { credentials: "same-origin" });
      session = await answer.json();
    } catch (error) {
      session = { user: null };
    }
    showWho();
  }

  function showWho() {
    const who = $("who");
    const button = $("login");
    if (session.user) {
      who.textContent = `${session.user} (${session.role})`;
      button.textContent = "log out";
    } else {
      who.textContent = session.login && session.login !== "open" ? session.login : "not logged in";
      button.textContent = "log in";
    }
  }

  function post(path, data) {
    const headers = { "content-type": "application/json" };
    if (session.csrf) headers["x-csrf-token"] = session.csrf;
    return fetch(path, {
      method: "POST", credentials: "same-origin", headers: headers, body: JSON.stringify(data || {}),
    });
  }

  function say(text, ok) {
    const verdict = $("verdict");
    verdict.hidden = false;
    verdict.className = `verdict ${ok ? "ok" : "refused"}`;
    verdict.textContent = text;
  }

  async function act(alert, action, li) {
    if (!session.user) {
      openLogin(`log in to ${action} ${alert}`);
      return;
    }
    const data = {};
    if (action === "override") data.reason = li.querySelector(".reason").value;
    let answer = await post(`/api/alarms/${encodeURIComponent(alert)}/${action}`, data);
    if (answer.status === 403) {
      await loadSession(); // a restarted monitor: a new CSRF token
      answer = await post(`/api/alarms/${encodeURIComponent(alert)}/${action}`, data);
    }
    const result = await answer.json();
    if (answer.status === 401) {
      await loadSession();
      openLogin(result.error);
      return;
    }
    const text = result.verdict
      ? `${action} ${alert} by ${result.by}: ${result.verdict}`
      : `${action} ${alert}: ${result.error}`;
    const output = li.querySelector("output.verdict");
    if (output) {
      output.textContent = result.applied ? "done" : `refused: ${result.verdict || result.error}`;
      output.className = `verdict ${result.applied ? "ok" : "refused"}`;
    }
    say(text, result.applied);
  }

  function openLogin(why) {
    $("login-error").textContent = why || "";
    $("login-dialog").showModal();
    $("login-user").focus();
  }

  $("login").addEventListener("click", async () => {
    if (!session.user) {
      openLogin("");
      return;
    }
    await post("/api/logout");
    session = { user: null };
    showWho();
    say("logged out", true);
  });
  $("login-cancel").addEventListener("click", () => $("login-dialog").close());
  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const answer = await post("/api/login", {
      user: $("login-user").value,
      password: $("login-password").value,
    });
    const result = await answer.json();
    if (!answer.ok) {
      $("login-error").textContent = result.error;
      return;
    }
    session = result;
    $("login-password").value = "";
    $("login-dialog").close();
    showWho();
    say(`logged in as ${session.user} (${session.role}) until ${local(session.expires, true)}`, true);
  });
  $("sound").addEventListener("click", () => CalguardSound.allow().then(showSound));
  document.addEventListener("calguard-sound", showSound);

  // the offline warning and the timers need time to pass, not messages: a local tick
  setInterval(() => {
    offline();
    if (state && !body.classList.contains("offline")) {
      $("clock").textContent = local(new Date(wardNow() / 1000).toISOString(), true);
    }
  }, 500);

  showSound();
  loadSession();
  listen();
})();
