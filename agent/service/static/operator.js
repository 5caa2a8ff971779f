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

  async function refresh() {
    const [models, topics, datasets, audit, jobs] = await Promise.all([
      call("GET", "/api/operator/models"), call("GET", "/api/operator/topics"), call("GET", "/api/operator/datasets"),
      call("GET", "/api/operator/audit"), call("GET", "/api/operator/jobs")]);
    $("active-version").textContent = "active: " + models.active;
    fill("versions", models.versions.map((v) => {
      const tr = row([v.id, v.state, v.method, (v.datasets || []).join(", "),
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
    fill("datasets", datasets.map((d) => row([d.id, (d.created_at || "").slice(0, 19),
      Object.entries(d.counts || {}).map(([k, n]) => `${k} ${n}`).join(", "), (d.contributors || []).join(", ")])),
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
      for (const id of ["versions", "jobs", "topics", "datasets", "audit"]) $(id).replaceChildren();
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
    $("rollback").addEventListener("click", () => act(
      async () => { const r = await call("POST", "/api/operator/rollback"); $("active-version").textContent = "active: " + r.active; },
      "Rolled back."));
    start();
  });
})();
