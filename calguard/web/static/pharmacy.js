// The pharmacy's page: a library uploaded as a draft, what the check and the diff say of
// it, approval with each warning ticked, publication, and every step's audit entry. Nothing
// here decides: the server checks the login, the role, each acknowledgement and four eyes
// again (calguard.pharmacy), and the page shows its verdict. A disabled button only saves
// a refusal. The login is the header's (station.js); each change reads the session's CSRF
// token first, so a login in between is taken as it is.
"use strict";

(function () {
  const PENDING_MS = 1000; // a publication not yet taken by this monitor: look again soon
  const QUIET_MS = 30000;
  const $ = (id) => document.getElementById(id);
  const esc = (text) =>
    String(text ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  const SIGNS = { "~": "changed", "+": "added", "-": "removed" };
  let shown = null; // the version on the page, as the server last described it
  let polling = null;

  async function read(path) {
    const answer = await fetch(path, { credentials: "same-origin" });
    return { status: answer.status, doc: await answer.json() };
  }

  async function send(path, body) {
    const session = (await read("/api/session")).doc;
    const headers = { "content-type": "application/json" };
    if (session.csrf) headers["x-csrf-token"] = session.csrf;
    const answer = await fetch(path, {
      method: "POST", credentials: "same-origin", headers: headers, body: body,
    });
    return { status: answer.status, doc: await answer.json() };
  }

  function say(id, ok, text) {
    const output = $(id);
    output.textContent = text;
    output.className = `verdict ${ok ? "ok" : "refused"}`;
  }

  function versionPath(version, step) {
    return `/api/library/versions/${encodeURIComponent(version)}${step ? "/" + step : ""}`;
  }

  // -- what this unit runs ----------------------------------------------------------------

  async function loadStatus() {
    clearTimeout(polling);
    const answer = await read("/api/library");
    const status = answer.doc;
    if (answer.status !== 200) {
      $("running-version").textContent = "?";
      $("published").textContent = status.error;
    } else {
      const running = status.running;
      $("running-version").textContent = running.version;
      $("running-name").textContent = `${running.name} (${running.source})`;
      $("running-approval").textContent = running.approved ? "approved" : "NOT APPROVED";
      const p = status.published;
      $("published").textContent = !status.follows
        ? "This monitor follows no publication (a demo, or no log database)."
        : !p
          ? "Nothing was published to this unit: it runs its site config's library."
          : `Published: ${p.version} by ${p.by} at ${p.t}` +
            (status.switch_pending
              ? ` - not running yet: the monitor switches at its next look at the log (every ${status.poll_s} s)`
              : " - running");
    }
    polling = setTimeout(loadStatus, status.switch_pending ? PENDING_MS : QUIET_MS);
  }

  // -- the steps and their audit entries ----------------------------------------------------

  function decided(step) {
    const d = step.detail || {};
    if (step.step === "draft") return `from ${d.source}; ${(d.warnings || []).length} warning(s)`;
    if (step.step === "approve") {
      const keys = (d.acknowledged || []).map((w) => w.key);
      return keys.length ? `acknowledged ${keys.join(", ")}` : "no warning to acknowledge";
    }
    return `approved by ${(d.approved_by || []).join(", ")}; four eyes ${d.four_eyes ? "yes" : "no"}; before: ${d.previous || "-"}`;
  }

  function entry(audit) {
    if (!audit) return "-";
    const said = audit.payload || {};
    return (
      `<span class="seq">${esc(audit.seq)}</span> ${esc(audit.kind)} by ${esc(audit.actor)}: ` +
      `content <code class="content">${esc(said.version)}</code>, text SHA-256 ` +
      `<code class="sha256" title="${esc(said.sha256)}">${esc(String(said.sha256 || "").slice(0, 16))}…</code>, ` +
      `HMAC <code class="hash" title="${esc(audit.hash)} (key ${esc(audit.key_id)})">${esc(String(audit.hash || "").slice(0, 16))}…</code>`
    );
  }

  function rows(steps) {
    return steps
      .map(
        (s) =>
          `<tr data-step="${esc(s.step)}" data-seq="${esc(s.audit ? s.audit.seq : "")}">` +
          `<td>${esc(s.t)}</td><td>${esc(s.step)}</td>` +
          `<td><a href="/pharmacy?version=${encodeURIComponent(s.version)}">${esc(s.version)}</a></td>` +
          `<td>${esc(s.unit ? s.unit + (s.profile ? ` (${s.profile})` : "") : "-")}</td>` +
          `<td>${esc(s.by)} (${esc(s.role)})</td><td>${esc(decided(s))}</td>` +
          `<td class="audit">${entry(s.audit)}</td></tr>`
      )
      .join("");
  }

  async function loadHistory() {
    const answer = await read("/api/library/history");
    const body = $("history").querySelector("tbody");
    body.innerHTML = answer.status === 200
      ? rows(answer.doc.steps) || '<tr><td colspan="7">no step yet: draft a library</td></tr>'
      : `<tr><td colspan="7">${esc(answer.doc.error)}</td></tr>`;
  }

  // -- a version: its check, its diff, approving and publishing -----------------------------

  function show(doc) {
    shown = doc;
    $("version").hidden = false;
    $("version-hash").textContent = doc.version;
    const profiles = doc.profiles.length ? `; profiles ${doc.profiles.join(", ")}` : "";
    $("version-name").textContent = `${doc.name}, ${doc.products} products${profiles}`;
    $("warnings").innerHTML = doc.warnings.length
      ? doc.warnings
          .map(
            (w) =>
              `<li data-key="${esc(w.key)}"><label><input type="checkbox" data-key="${esc(w.key)}"> ` +
              `<code>${esc(w.key)}</code> ${esc(w.message)}</label></li>`
          )
          .join("")
      : '<li class="none">none: nothing departs from the clinical reference</li>';
    const diff = doc.diff || { from: "?", changes: [] };
    $("diff-from").textContent = `${diff.from} (${diff.changes.length} change(s))`;
    $("diff").innerHTML =
      diff.changes
        .map((c) => `<li class="${SIGNS[c.sign]}" data-key="${esc(c.key)}">${esc(c.text)}</li>`)
        .join("") || '<li class="none">no change</li>';
    $("approved-by").textContent = doc.approved_by.length
      ? `Approved by ${doc.approved_by.join(", ")}.`
      : "Not approved yet.";
    $("steps").querySelector("tbody").innerHTML = rows(doc.steps);
    ready();
  }

  function boxes() {
    return [...$("warnings").querySelectorAll("input[data-key]")];
  }

  function ready() {
    $("approve").disabled = !shown || !boxes().every((box) => box.checked);
  }

  async function openVersion(version) {
    const answer = await read(versionPath(version));
    if (answer.status !== 200) {
      say("draft-verdict", false, answer.doc.error);
      return;
    }
    show(answer.doc);
  }

  async function reload() {
    await Promise.all([openVersion(shown.version), loadHistory(), loadStatus()]);
  }

  $("draft-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = $("draft-file").files[0];
    const text = file ? await file.text() : $("draft-text").value;
    if (!text.trim()) {
      say("draft-verdict", false, "choose a library file, or paste its text");
      return;
    }
    const draft = file ? { text: text, source: file.name } : { text: text };
    const answer = await send("/api/library/drafts", JSON.stringify(draft));
    $("draft-problems").innerHTML = (answer.doc.problems || [])
      .map((p) => `<li data-key="${esc(p.key)}"><code>${esc(p.key)}</code> ${esc(p.message)}</li>`)
      .join("");
    if (answer.status !== 201) {
      say("draft-verdict", false, `refused: ${answer.doc.error}`);
      return;
    }
    const step = answer.doc.steps[answer.doc.steps.length - 1];
    say("draft-verdict", true, `drafted ${answer.doc.version} by ${step.by}; audit entry ${step.audit ? step.audit.seq : "-"}`);
    window.history.replaceState(null, "", `/pharmacy?version=${encodeURIComponent(answer.doc.version)}`);
    show(answer.doc);
    loadHistory();
  });

  $("warnings").addEventListener("change", ready);

  $("approve").addEventListener("click", async () => {
    const acknowledged = boxes().filter((box) => box.checked).map((box) => box.dataset.key);
    const answer = await send(versionPath(shown.version, "approve"), JSON.stringify({ acknowledged }));
    if (answer.status !== 200) {
      say("approve-verdict", false, `refused: ${answer.doc.error}`);
      return;
    }
    const step = answer.doc;
    say("approve-verdict", true, `approved by ${step.by} (${step.role}); audit entry ${step.audit ? step.audit.seq : "-"}`);
    await reload();
  });

  $("publish").addEventListener("click", async () => {
    const answer = await send(versionPath(shown.version, "publish"), "{}");
    if (answer.status !== 200) {
      say("publish-verdict", false, `refused: ${answer.doc.error}`);
      return;
    }
    const said = answer.doc.steps.map(
      (s) => `published to ${s.unit} by ${s.by} (${s.role}); audit entry ${s.audit ? s.audit.seq : "-"}`
    );
    say("publish-verdict", true, `${said.join("; ")}; its monitor switches within ${answer.doc.switch_within_s} s`);
    await reload();
  });

  const asked = document.querySelector("main.pharmacy").dataset.version;
  if (asked) openVersion(asked);
  loadStatus();
  loadHistory();
})();
