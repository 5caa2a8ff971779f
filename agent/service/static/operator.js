// The operator console. Every value from the server is shown with textContent: nothing is parsed as HTML,
// except gate reports, which render in a sandboxed frame (no scripts, inherited CSP).
(function () {
  "use strict";
  const KEY = "affinage-operator-key";
  const $ = (id) => document.getElementById(id);

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function notify(message, isError) {
    const notice = $("notice");
    notice.textContent = message;
    notice.className = isError ? "notice error" : "notice";
    notice.hidden = !message;
  }

  async function call(method, path, body) {
    const response = await fetch(path, {
      method,
      headers: { Authorization: "Bearer " + sessionStorage.getItem(KEY), "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    const type = response.headers.get("content-type") || "";
    return type.includes("json") ? response.json() : response.text();
  }

  function row(cells) {
    const tr = el("tr");
    for (const cell of cells) {
      const td = el("td");
      if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell === null || cell === undefined ? "—" : String(cell);
      tr.appendChild(td);
    }
    return tr;
  }

  function fill(id, rows, empty) {
    const body = $(id);
    body.replaceChildren(...rows);
    if (!rows.length) body.appendChild(row([empty]));
  }

  function button(label, testid, onClick, secondary) {
    const b = el("button", label, secondary ? "button secondary" : "button primary");
    b.type = "button";
    b.dataset.testid = testid;
    b.addEventListener("click", onClick);
    return b;
  }

  async function act(work, done) {
    // The notice comes after the tables are redrawn, so it always describes what is on screen.
    let message = done, isError = false;
    try {
      await work();
    } catch (error) {
      message = error.message;
      isError = true;
    }
    try {
      await refresh();
    } catch (error) {
      message = error.message;
      isError = true;
    }
    notify(message, isError);
  }

  function decisionCell(version) {
    const box = el("div", null, "decide");
    const gated = version.state === "gated-passed" || version.state === "gated-failed";
    const promotable = version.state === "gated-passed" || version.state === "approved" || version.state === "retired";
    if (version.gate) box.appendChild(button("Report", "report-" + version.id, () => showReport(version.id), true));
    if (gated) {
      const comment = el("textarea");
      comment.placeholder = "Comment (required)";
      comment.setAttribute("aria-label", "Comment on " + version.id);
      comment.dataset.testid = "comment-" + version.id;
      box.appendChild(comment);
      let override = null;
      if (version.state === "gated-failed") {
        override = el("textarea");
        override.placeholder = "Admin override reason (to approve despite failed gates)";
        override.setAttribute("aria-label", "Override reason for " + version.id);
        override.dataset.testid = "override-" + version.id;
        box.appendChild(override);
      }
      const decide = (decision) => () => {
        if (!comment.value.trim()) { notify("A decision needs a comment saying why.", true); comment.focus(); return; }
        const body = { comment: comment.value.trim() };
        if (override && override.value.trim()) body.override_reason = override.value.trim();
        act(() => call("POST", `/api/operator/models/${encodeURIComponent(version.id)}/${decision}`, body),
            `${version.id}: ${decision === "approve" ? "approved" : "rejected"}.`);
      };
      const buttons = el("div", null, "buttons");
      buttons.append(button("Approve", "approve-" + version.id, decide("approve")),
                     button("Reject", "reject-" + version.id, decide("reject"), true));
      box.appendChild(buttons);
    }
    if (version.state === "approved" && canaryRules && !canaryRunning) {
      const share = canaryRules.steps[0];
      box.appendChild(button(`Canary ${share}%`, "canary-start-" + version.id, () => act(
        () => call("POST", "/api/operator/canary", { version: version.id, share }),
        `${version.id} serves ${share}% of new conversations as a canary.`), true));
    }
    if (promotable) {
      box.appendChild(button("Promote", "promote-" + version.id, () => act(
        () => call("POST", `/api/operator/promote/${encodeURIComponent(version.id)}`), `${version.id} is now active.`)));
    }
    return box;
  }

  async function showReport(id) {
    try {
      $("report-frame").srcdoc = await call("GET", `/api/operator/models/${encodeURIComponent(id)}/report`);
      $("report-title").textContent = "Gate report: " + id;
      $("report-panel").hidden = false;
      $("report-panel").scrollIntoView();
    } catch (error) {
      notify(error.message, true);
    }
  }

  // The knobs a search varies, so the candidates of one cycle (one dataset) compare side by side.
  function configText(config) {
    const names = { learning_rate: "lr", max_steps: "steps", epochs: "epochs", lora_r: "rank", target_modules: "modules" };
    const parts = Object.entries(config || {}).map(([k, v]) => `${names[k] || k} ${Array.isArray(v) ? v.join(",") : v}`);
    return parts.length ? parts.join(", ") : null;
  }

  function gateText(version) {
    if (!version.gate) return "not gated";
    return version.gate.passed ? "passed" : "failed: " + (version.gate.failed || []).join("; ");
  }

  async function showJobLog(id) {
    try {
      const log = await call("GET", `/api/operator/jobs/${encodeURIComponent(id)}/log`);
      $("job-log").textContent = log.lines
        .map((l) => `${l.at.slice(0, 19).replace("T", " ")} ${l.level} ${l.message}`).join("\n");
      $("job-log-title").textContent = "Job log: " + id;
      $("job-log-panel").hidden = false;
    } catch (error) {
      notify(error.message, true);
    }
  }

  function jobRow(j) {
    const result = [j.dataset && "dataset " + j.dataset, j.candidate && "candidate " + j.candidate,
                    j.gate === true ? "gates passed" : j.gate === false ? "gates failed" : null, j.outcome,
                    j.error && "error: " + j.error].filter(Boolean).join("; ");
    const times = [["created", j.created_at], ["started", j.started_at], ["finished", j.finished_at],
                   ["heartbeat", j.state === "running" ? j.heartbeat_at : null]]
      .filter(([, t]) => t).map(([name, t]) => `${name} ${t.slice(0, 19).replace("T", " ")}`).join(", ");
    const tr = row([j.id.slice(0, 12), j.state, j.stage, Math.round(j.progress * 100) + "%",
                    `${j.attempts}/${j.max_attempts}`, j.trigger, result || null, times,
                    button("Log", "job-log-" + j.id, () => showJobLog(j.id), true)]);
    tr.dataset.testid = "job-" + j.id;
    tr.children[1].className = "state state-" + j.state;
    return tr;
  }

  // --- canary ------------------------------------------------------------------------------------------------
  let canaryRules = null, canaryRunning = false, canaryStatus = null;
  const SVG = "http://www.w3.org/2000/svg";

  function svg(tag, attributes, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function pct(x) { return (x * 100).toFixed(1) + "%"; }

  function verdict(s) {
    if (s.worse) return "worse: roll back";
    if (s.within) return "no harm shown";
    return "not yet decided";
  }

  // The chosen signal's difference and always-valid interval over conversations, against 0 (above: worse, the
  // canary is rolled back) and the tolerated degradation (below: no harm, it may advance).
  function drawCanaryPlot() {
    const plot = $("canary-plot"), name = $("canary-signal").value;
    const points = (canaryStatus.trajectory || []).map((p) => ({ n: p.conversations, ...(p.signals[name] || {}) }))
      .filter((p) => p.low !== undefined && Number.isFinite(p.low) && Number.isFinite(p.high));
    const delta = canaryRules.max_degradation, W = 640, H = 220, left = 48, bottom = 28;
    plot.replaceChildren();
    if (!points.length) {
      plot.appendChild(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#666" }, "No conversations yet."));
      return;
    }
    const lo = Math.min(-delta, ...points.map((p) => p.low)), hi = Math.max(2 * delta, ...points.map((p) => p.high));
    const top = Math.max(...points.map((p) => p.n), 1);
    const x = (n) => left + (W - left - 10) * n / top, y = (v) => 10 + (H - bottom - 10) * (hi - v) / (hi - lo);
    const line = (key) => points.map((p) => `${x(p.n).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" ");
    plot.append(
      svg("line", { x1: left, x2: W - 10, y1: y(0), y2: y(0), stroke: "#b00020", "stroke-dasharray": "4 3" }),
      svg("text", { x: W - 12, y: y(0) - 4, "text-anchor": "end", fill: "#b00020", "font-size": 11 }, "0: worse above"),
      svg("line", { x1: left, x2: W - 10, y1: y(delta), y2: y(delta), stroke: "#1b7f3b", "stroke-dasharray": "4 3" }),
      svg("text", { x: W - 12, y: y(delta) - 4, "text-anchor": "end", fill: "#1b7f3b", "font-size": 11 },
          `${pct(delta)}: tolerated`),
      svg("polyline", { points: line("high"), fill: "none", stroke: "#555", "stroke-width": 1.5 }),
      svg("polyline", { points: line("low"), fill: "none", stroke: "#555", "stroke-width": 1.5 }),
      svg("polyline", { points: line("diff"), fill: "none", stroke: "#1a56db", "stroke-width": 2 }),
      svg("text", { x: left, y: H - 8, "font-size": 11, fill: "#333" }, "0"),
      svg("text", { x: W - 10, y: H - 8, "text-anchor": "end", "font-size": 11, fill: "#333" }, `${top} conversations`),
      svg("text", { x: left - 4, y: y(hi) + 10, "text-anchor": "end", "font-size": 11, fill: "#333" }, pct(hi)),
      svg("text", { x: left - 4, y: y(lo), "text-anchor": "end", "font-size": 11, fill: "#333" }, pct(lo)));
  }

  function drawCanary(status) {
    canaryStatus = status;
    canaryRules = status.rules;
    canaryRunning = Boolean(status.canary);
    $("canary-running").hidden = !canaryRunning;
    if (!canaryRunning) {
      const last = status.last;
      $("canary-state").textContent = `No canary running; ${status.active} serves every conversation.` + (last
        ? ` Last: ${last.action} of ${last.version} by ${last.actor} at ${last.at.slice(0, 19).replace("T", " ")}`
          + (last.reason ? ` (${last.reason})` : "") + "." : "");
      return;
    }
    const c = status.canary, d = status.decision;
    $("canary-state").textContent = `${c.version} serves ${c.share}% of new conversations (since `
      + `${c.started_at.slice(0, 19).replace("T", " ")} UTC); the rest: ${status.active}. Test: ${d.action}: ${d.reason}`;
    const signals = Object.entries(d.signals);
    fill("canary-arms", signals.map(([name, s]) => {
      const tr = row([name, `${s.active_bad}/${s.active_conversations} (${pct(s.active_rate)})`,
                      `${s.canary_bad}/${s.canary_conversations} (${pct(s.canary_rate)})`,
                      `${s.diff >= 0 ? "+" : ""}${pct(s.diff)} [${pct(s.low)}, ${pct(s.high)}]`, verdict(s)]);
      tr.dataset.testid = "canary-signal-" + name;
      return tr;
    }), "No signals.");
    const select = $("canary-signal"), chosen = select.value;
    select.replaceChildren(...signals.map(([name]) => { const o = el("option", name); o.value = name; return o; }));
    select.value = chosen in d.signals ? chosen : (signals[0] || [""])[0];
    drawCanaryPlot();
  }

  function canaryAction(path, needsComment, done) {
    const comment = $("canary-comment");
    if (needsComment && !comment.value.trim()) { notify("Say why in the comment first.", true); comment.focus(); return; }
    act(async () => {
      await call("POST", "/api/operator/canary/" + path, needsComment ? { comment: comment.value.trim() } : {});
      comment.value = "";
    }, done);
  }

  // What the per-user cap dropped from a dataset, and why (failures of one user over the cap; held-out rows stay).
  function capText(cap) {
    if (!cap) return null;
    if (cap.cap === null) return `nobody over max(${cap.floor}, ${cap.share} of the failures)`;
    return `${cap.cap} failures a user: ` + Object.entries(cap.users)
      .map(([user, u]) => `${user} kept ${u.kept} of ${u.failures}, dropped ${u.dropped}`).join("; ");
  }

  async function refresh() {
    const [models, topics, datasets, audit, jobs, canary, guarded] = await Promise.all([
      call("GET", "/api/operator/models"), call("GET", "/api/operator/topics"), call("GET", "/api/operator/datasets"),
      call("GET", "/api/operator/audit"), call("GET", "/api/operator/jobs"), call("GET", "/api/operator/canary"),
      call("GET", "/api/operator/guard-events?limit=50")]);
    drawCanary(canary);
    $("active-version").textContent = "active: " + models.active;
    fill("versions", models.versions.map((v) => {
      const tr = row([v.id, v.state, v.method, (v.datasets || []).join(", "), configText(v.config),
                      v.held_out_gain == null ? null : (v.held_out_gain >= 0 ? "+" : "") + v.held_out_gain.toFixed(3),
                      v.metrics && v.metrics.best_validation_loss != null ? v.metrics.best_validation_loss.toFixed(4) : null,
                      gateText(v), decisionCell(v)]);
      tr.dataset.testid = "version-" + v.id;
      tr.children[1].className = "state state-" + v.state;
      if (v.trained_on_erased_data) {  // an erasure removed data it learnt from: retrain or retire it
        const flag = el("div", "trained on erased data", "flag flag-erased");
        flag.dataset.testid = "erased-" + v.id;
        tr.children[1].appendChild(flag);
      }
      return tr;
    }), "No versions yet: affinage train builds one.");
    fill("jobs", jobs.map(jobRow), "No jobs yet: affinage worker runs them.");
    fill("topics", topics.map((t) => row([t.label, t.count, t.remedy + ": " + t.why])),
         "No failures in the last 30 days.");
    fill("guard-events", guarded.map((e) => row([e.at.slice(0, 19).replace("T", " "), e.interaction_id,
                                                 e.model_version, e.removed, e.question])),
         "No answer changed by the output guard.");
    fill("datasets", datasets.map((d) => row([d.id, (d.created_at || "").slice(0, 19),
      Object.entries(d.counts || {}).map(([k, n]) => `${k} ${n}`).join(", "), (d.contributors || []).join(", "),
      capText(d.per_user_cap)])),
      "No datasets yet: affinage synth builds one.");
    fill("audit", audit.map((e) => row([e.at.slice(0, 19).replace("T", " "), e.actor, e.action, e.subject, e.detail])),
         "Nothing yet.");
  }

  // The erasure's report as plain lines (it holds counts and random ids only; shown with textContent).
  function erasureText(report) {
    if ("left" in report) {
      const left = Object.entries(report.left);
      return left.length ? "NOT clean, still there: " + left.map(([kind, n]) => `${kind} ${n}`).join(", ")
                         : "clean: nothing left for this " + report.selector + ".";
    }
    if (report.nothing_found) {
      return `Nothing found for this ${report.selector}; the request is recorded (erasure ${report.erasure_id}).`;
    }
    const lines = [`erasure ${report.erasure_id} (${report.selector})` + (report.resumed ? ": resumed and finished" : "")];
    for (const [table, n] of Object.entries(report.counts)) lines.push(`  ${table}: ${n}`);
    for (const d of report.datasets) {
      lines.push(`  dataset ${d.old} superseded by ${d.new || "nothing (no rows left)"}`);
    }
    lines.push("  versions flagged 'trained on erased data': " + (report.versions.join(", ") || "none"));
    if (report.follow_up_job) lines.push("  follow-up job: " + report.follow_up_job);
    return lines.join("\n");
  }

  async function erase(checkOnly) {
    const kind = $("erase-kind").value, value = $("erase-value").value.trim();
    if (!value) { notify("Give the " + kind + " to erase.", true); $("erase-value").focus(); return; }
    if (!checkOnly && !$("erase-confirm").checked) {
      notify("Tick 'Erase this data for good' first: an erasure cannot be undone.", true);
      return;
    }
    await act(async () => {
      const report = await call("POST", "/api/admin/forget", { [kind]: value, check: checkOnly });
      $("erase-report").textContent = erasureText(report);
      $("erase-report").hidden = false;
      if (!checkOnly) { $("erase-value").value = ""; $("erase-confirm").checked = false; }
    }, checkOnly ? "Checked." : "Erased.");
  }

  async function start() {
    const signedIn = Boolean(sessionStorage.getItem(KEY));
    $("key-panel").hidden = signedIn;
    $("console").hidden = !signedIn;
    $("session-actions").hidden = !signedIn;
    if (!signedIn) return;
    try {
      await refresh();
    } catch (error) {
      if (error.status === 401 || error.status === 403) {
        sessionStorage.removeItem(KEY);
        await start();
      }
      notify(error.message, true);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      sessionStorage.setItem(KEY, $("key-input").value.trim());
      $("key-input").value = "";
      notify("", false);
      start();
    });
    $("sign-out").addEventListener("click", (event) => {
      event.preventDefault();
      sessionStorage.removeItem(KEY);
      for (const id of ["versions", "jobs", "topics", "guard-events", "datasets", "audit"]) $(id).replaceChildren();
      $("job-log").textContent = "";
      $("job-log-panel").hidden = true;
      $("active-version").textContent = "";
      $("report-panel").hidden = true;
      $("erase-report").textContent = "";
      $("erase-report").hidden = true;
      notify("", false);
      start();
    });
    $("erase-form").addEventListener("submit", (event) => { event.preventDefault(); erase(false); });
    $("erase-check").addEventListener("click", () => erase(true));
    $("canary-signal").addEventListener("change", drawCanaryPlot);
    $("canary-advance").addEventListener("click", () => canaryAction("advance", false, "Canary advanced."));
    $("canary-stop").addEventListener("click", () => canaryAction("stop", true, "Canary stopped."));
    $("canary-rollback").addEventListener("click", () => canaryAction("rollback", true, "Canary rolled back."));
    $("rollback").addEventListener("click", () => act(
      async () => { const r = await call("POST", "/api/operator/rollback"); $("active-version").textContent = "active: " + r.active; },
      "Rolled back."));
    start();
  });
})();
