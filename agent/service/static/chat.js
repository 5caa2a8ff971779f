// The support agents' chat page. Plain JS, no dependencies.
//
// Security rule for this file: text from the user, the model, citations or the server is only ever
// inserted with textContent / createTextNode — never innerHTML, insertAdjacentHTML or document.write —
// so HTML or markdown in an answer is shown literally and can neither run script nor load anything.
"use strict";

(function () {
  const KEY_STORAGE = "affinage-key";
  const HISTORY_STORAGE = "affinage-history";
  const META_STORAGE = "affinage-answer-meta"; // {historyIndex: {interaction_id, citations, model_version}}
  const CUSTOMER_STORAGE = "affinage-customer"; // the Customer ID of this conversation, sent as OpenAI's `user`
  // This conversation's id: its turns are logged together and, while a canary runs, answered by one version.
  const CONVERSATION_STORAGE = "affinage-conversation";
  const MODEL = "default";

  const $ = (id) => document.getElementById(id);

  let controller = null; // AbortController of the answer being streamed, if any

  // ---- storage -------------------------------------------------------------------------------

  function readJSON(name, fallback) {
    try {
      const value = JSON.parse(sessionStorage.getItem(name));
      return value === null ? fallback : value;
    } catch (_) {
      return fallback;
    }
  }

  function getKey() {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  }

  function getHistory() {
    const history = readJSON(HISTORY_STORAGE, []);
    if (!Array.isArray(history)) return [];
    return history.filter(
      (m) => m && (m.role === "user" || m.role === "assistant") && typeof m.content === "string"
    );
  }

  function getMeta() {
    const meta = readJSON(META_STORAGE, {});
    return meta && typeof meta === "object" && !Array.isArray(meta) ? meta : {};
  }

  function saveTurn(question, answer, meta) {
    const history = getHistory();
    history.push({ role: "user", content: question }, { role: "assistant", content: answer });
    sessionStorage.setItem(HISTORY_STORAGE, JSON.stringify(history));
    const allMeta = getMeta();
    allMeta[String(history.length - 1)] = meta;
    sessionStorage.setItem(META_STORAGE, JSON.stringify(allMeta));
  }

  function conversationId() {
    let id = sessionStorage.getItem(CONVERSATION_STORAGE);
    if (!id) {  // getRandomValues, not randomUUID: the page may be served over plain http on a LAN
      id = Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
      sessionStorage.setItem(CONVERSATION_STORAGE, id);
    }
    return id;
  }

  function clearConversation() {
    sessionStorage.removeItem(HISTORY_STORAGE);
    sessionStorage.removeItem(META_STORAGE);
    sessionStorage.removeItem(CUSTOMER_STORAGE);
    sessionStorage.removeItem(CONVERSATION_STORAGE);
    $("customer").value = "";
  }

  // ---- small DOM helpers (text only) --------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = !message;
  }

  function scrollToEnd() {
    const messages = $("messages");
    messages.scrollTop = messages.scrollHeight;
    window.scrollTo(0, document.body.scrollHeight);
  }

  // ---- views -----------------------------------------------------------------------------------

  function showView() {
    const signedIn = Boolean(getKey());
    $("key-panel").hidden = signedIn;
    $("chat-panel").hidden = !signedIn;
    $("session-actions").hidden = !signedIn;
    if (signedIn) {
      renderHistory();
      $("question").focus();
    } else {
      $("key-input").focus();
    }
  }

  function resetMessages() {
    const messages = $("messages");
    while (messages.firstChild) messages.removeChild(messages.firstChild);
    const empty = el("p", "empty-state", "Ask a question about the product; answers cite the knowledge base.");
    empty.id = "empty-state";
    messages.appendChild(empty);
  }

  function renderHistory() {
    resetMessages();
    const meta = getMeta();
    getHistory().forEach((message, index) => {
      if (message.role === "user") {
        addUserMessage(message.content);
      } else {
        const view = addAssistantMessage();
        view.body.textContent = message.content;
        finishAssistantMessage(view, meta[String(index)] || null);
      }
    });
    scrollToEnd();
  }

  function hideEmptyState() {
    const empty = $("empty-state");
    if (empty) empty.remove();
  }

  function addUserMessage(text) {
    hideEmptyState();
    const message = el("article", "message user");
    message.setAttribute("aria-label", "You");
    message.appendChild(el("div", "message-role", "You"));
    message.appendChild(el("div", "message-body", text));
    $("messages").appendChild(message);
    return message;
  }

  function addAssistantMessage() {
    hideEmptyState();
    const message = el("article", "message assistant");
    message.setAttribute("aria-label", "Assistant");
    message.setAttribute("data-testid", "assistant-message");
    message.appendChild(el("div", "message-role", "Assistant"));
    const body = el("div", "message-body");
    body.setAttribute("data-testid", "answer");
    message.appendChild(body);
    $("messages").appendChild(message);
    return { message, body };
  }

  // Citations, feedback controls and footer, added once an answer is complete.
  function finishAssistantMessage(view, meta) {
    const { message, body } = view;
    message.removeAttribute("aria-busy");
    if (!body.textContent) message.insertBefore(el("div", "message-note", "(The assistant returned an empty answer.)"), body.nextSibling);
    if (!meta) return;
    const citations = Array.isArray(meta.citations) ? meta.citations : [];
    if (citations.length) {
      const block = el("div", "citations");
      block.appendChild(el("span", "citations-label", "Sources:"));
      const list = el("ul", "citation-list");
      citations.forEach((citation) => {
        const item = el("li");
        const button = el("button", "citation", citation && citation.source);
        button.type = "button";
        button.setAttribute("data-testid", "citation");
        button.setAttribute("aria-haspopup", "dialog");
        button.title = "Show the cited passage";
        button.addEventListener("click", () => openPassage(citation || {}));
        item.appendChild(button);
        list.appendChild(item);
      });
      block.appendChild(list);
      message.appendChild(block);
    }
    message.appendChild(buildFeedback(meta.interaction_id || null));
    if (meta.model_version) {
      message.appendChild(el("div", "message-meta", "model: " + meta.model_version));
    }
  }

  // ---- citations panel ---------------------------------------------------------------------

  function openPassage(citation) {
    $("passage-source").textContent = String(citation.source || "(unknown source)");
    const score = Number(citation.score);
    $("passage-score").textContent = Number.isFinite(score) ? "Relevance score: " + score.toFixed(3) : "";
    $("passage-text").textContent = String(citation.text || "");
    const panel = $("passage-panel");
    if (typeof panel.showModal === "function") {
      if (!panel.open) panel.showModal();
    } else {
      panel.setAttribute("open", "");
    }
    $("passage-close").focus();
  }

  function closePassage() {
    const panel = $("passage-panel");
    if (typeof panel.close === "function") panel.close();
    else panel.removeAttribute("open");
  }

  // ---- feedback ------------------------------------------------------------------------------

  // Thumb icons as inline SVG built with DOM calls (no emoji: not every machine has an emoji font).
  const SVG_NS = "http://www.w3.org/2000/svg";
  const THUMB_UP_PATH =
    "M1 21h4V9H1v12zm22-11c0-1.1-.9-2-2-2h-6.31l.95-4.57.03-.32c0-.41-.17-.79-.44-1.06L14.17 1 7.59 7.59" +
    "C7.22 7.95 7 8.45 7 9v10c0 1.1.9 2 2 2h9c.83 0 1.54-.5 1.84-1.22l3.02-7.05c.09-.23.14-.47.14-.73v-2z";
  const THUMB_DOWN_PATH =
    "M15 3H6c-.83 0-1.54.5-1.84 1.22l-3.02 7.05c-.09.23-.14.47-.14.73v2c0 1.1.9 2 2 2h6.31l-.95 4.57-.03.32" +
    "c0 .41.17.79.44 1.06L9.83 23l6.59-6.59c.36-.36.58-.86.58-1.41V5c0-1.1-.9-2-2-2zm4 0v12h4V3h-4z";

  function thumbButton(className, path, label) {
    const button = el("button", "thumb " + className);
    button.type = "button";
    button.setAttribute("aria-pressed", "false");
    button.setAttribute("data-testid", className);
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", "16");
    svg.setAttribute("height", "16");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    const shape = document.createElementNS(SVG_NS, "path");
    shape.setAttribute("d", path);
    svg.appendChild(shape);
    button.append(svg, el("span", null, label));
    return button;
  }

  function buildFeedback(interactionId) {
    const box = el("div", "feedback");
    const row = el("div", "feedback-row");
    row.appendChild(el("span", "feedback-label", "Was this answer right?"));
    const up = thumbButton("thumb-up", THUMB_UP_PATH, "Helpful");
    const down = thumbButton("thumb-down", THUMB_DOWN_PATH, "Not right");
    row.appendChild(up);
    row.appendChild(down);
    box.appendChild(row);

    const form = el("form", "feedback-form");
    form.hidden = true;
    const uid = "fb-" + Math.random().toString(36).slice(2, 10);
    // A labelled textarea; its class doubles as its test id.
    const field = (name, text, rows) => {
      const label = el("label", null, text);
      label.htmlFor = uid + "-" + name;
      const area = el("textarea", name);
      area.id = uid + "-" + name;
      area.rows = rows;
      area.setAttribute("data-testid", name);
      return [label, area];
    };
    const [correctionLabel, correction] = field("correction", "What should the answer have been?", 3);
    const [commentLabel, comment] = field("comment", "Comment (optional)", 2);
    const submit = el("button", "button primary feedback-submit", "Submit");
    submit.type = "submit";
    submit.setAttribute("data-testid", "feedback-submit");
    form.append(correctionLabel, correction, commentLabel, comment, submit);
    box.appendChild(form);

    const status = el("div", "feedback-status");
    status.setAttribute("role", "status");
    status.setAttribute("aria-live", "polite");
    status.setAttribute("data-testid", "feedback-status");
    box.appendChild(status);

    if (!interactionId) {
      up.disabled = down.disabled = true;
      status.textContent = "Feedback is unavailable for this answer (it was not logged).";
      return box;
    }

    const setBusy = (busy) => {
      up.disabled = down.disabled = submit.disabled = busy;
    };

    up.addEventListener("click", async () => {
      form.hidden = true;
      down.setAttribute("aria-pressed", "false");
      up.setAttribute("aria-pressed", "true");
      await sendFeedback({ interaction_id: interactionId, rating: "up" }, status, setBusy);
    });
    down.addEventListener("click", () => {
      up.setAttribute("aria-pressed", "false");
      down.setAttribute("aria-pressed", "true");
      form.hidden = false;
      status.textContent = "";
      correction.focus();
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const payload = { interaction_id: interactionId, rating: "down" };
      if (correction.value.trim()) payload.correction = correction.value.trim();
      if (comment.value.trim()) payload.comment = comment.value.trim();
      const ok = await sendFeedback(payload, status, setBusy);
      if (ok) form.hidden = true;
    });
    return box;
  }

  async function sendFeedback(payload, status, setBusy) {
    setBusy(true);
    status.classList.remove("is-error");
    status.textContent = "Saving…";
    try {
      const response = await fetch("/api/feedback", {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: "Bearer " + getKey() },
        body: JSON.stringify(payload),
      });
      if (!response.ok) throw new Error(await errorMessage(response));
      status.textContent = "Thanks — feedback saved";
      return true;
    } catch (error) {
      status.classList.add("is-error");
      status.textContent = "Feedback not saved: " + messageOf(error);
      return false;
    } finally {
      setBusy(false);
    }
  }

  // ---- errors --------------------------------------------------------------------------------

  function messageOf(error) {
    return error && error.message ? String(error.message) : String(error);
  }

  // The text to show for a failed response: the server's error.message, plus advice for some statuses.
  async function errorMessage(response, advise = true) {
    let message = "";
    try {
      const body = await response.json();
      if (body && body.error && body.error.message) message = String(body.error.message);
      else if (body && body.detail) message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) {
      // not JSON
    }
    if (!message) message = "request failed with HTTP " + response.status + (response.statusText ? " " + response.statusText : "");
    if (advise && response.status === 401) message += " — check your API key (Sign out, then paste it again).";
    const retry = response.headers.get("Retry-After");
    if ((response.status === 429 || response.status === 503) && retry) {
      message += " — try again in " + retry + " s.";
    }
    return message;
  }

  // ---- chat ----------------------------------------------------------------------------------

  function setStreaming(streaming) {
    $("send").disabled = streaming;
    $("stop").hidden = !streaming;
    $("new-conversation").disabled = streaming;
  }

  // Reads an OpenAI-style SSE stream, calling onChunk for every parsed `data:` JSON object.
  async function readEvents(response, onChunk) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let done = false;
    const handle = (event) => {
      const data = event
        .split(/\r\n|\r|\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (!data) return;
      if (data.trim() === "[DONE]") {
        done = true;
        return;
      }
      onChunk(JSON.parse(data));
    };
    while (!done) {
      const { value, done: finished } = await reader.read();
      if (finished) break;
      buffer += decoder.decode(value, { stream: true });
      const events = buffer.split(/\r\n\r\n|\n\n|\r\r/);
      buffer = events.pop();
      for (const event of events) {
        handle(event);
        if (done) break;
      }
    }
    buffer += decoder.decode();
    if (!done && buffer.trim()) handle(buffer);
    if (done) reader.cancel().catch(() => {});
    return done;
  }

  // The request body; a Customer ID goes as OpenAI's `user`, so the customer's data can be found and erased later.
  function chatBody(messages) {
    const body = { model: MODEL, messages, stream: true, conversation_id: conversationId() };
    const customer = $("customer").value.trim();
    if (customer) body.user = customer;
    return body;
  }

  async function ask(question) {
    showError("");
    const messages = getHistory()
      .map((m) => ({ role: m.role, content: m.content }))
      .concat([{ role: "user", content: question }]);
    const userView = addUserMessage(question);
    const view = addAssistantMessage();
    view.message.setAttribute("aria-busy", "true");
    view.message.classList.add("streaming");
    scrollToEnd();
    setStreaming(true);
    controller = new AbortController();

    let answer = "";
    let meta = null;
    try {
      const response = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: {
          "Content-Type": "application/json",
          Accept: "text/event-stream",
          Authorization: "Bearer " + getKey(),
        },
        body: JSON.stringify(chatBody(messages)),
        signal: controller.signal,
      });
      if (!response.ok) throw new Error(await errorMessage(response));
      const complete = await readEvents(response, (chunk) => {
        if (chunk.error) throw new Error(String(chunk.error.message || "the answer failed"));
        const choice = chunk.choices && chunk.choices[0];
        const piece = choice && choice.delta && choice.delta.content;
        if (piece) {
          answer += piece;
          view.body.textContent = answer;
          scrollToEnd();
        }
        if (chunk.affinage) {
          meta = {
            interaction_id: chunk.affinage.interaction_id || null,
            citations: Array.isArray(chunk.affinage.citations) ? chunk.affinage.citations : [],
            model_version: chunk.affinage.model_version || "",
          };
        }
      });
      if (!complete) throw new Error("the answer was cut off before it finished; please try again.");
      view.message.classList.remove("streaming");
      const finalText = answer.trim();
      view.body.textContent = finalText;
      saveTurn(question, finalText, meta);
      finishAssistantMessage(view, meta);
      scrollToEnd();
    } catch (error) {
      // The turn is not kept: remove it from the page, and give the question back for a retry.
      view.message.remove();
      userView.remove();
      if (!$("messages").querySelector(".message")) resetMessages();
      if (!$("question").value) $("question").value = question;
      showError(error && error.name === "AbortError" ? "Stopped." : messageOf(error));
    } finally {
      controller = null;
      setStreaming(false);
      $("question").focus();
    }
  }

  // ---- wiring --------------------------------------------------------------------------------

  function init() {
    $("key-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const key = $("key-input").value.trim();
      if (!key) return;
      const keyError = $("key-error");
      keyError.hidden = true;
      $("key-save").disabled = true;
      try {
        // Check the key at once when the server says it is wrong; anything else is left to the first question.
        const response = await fetch("/v1/models", { headers: { Authorization: "Bearer " + key } });
        if (response.status === 401 || response.status === 403) {
          keyError.textContent = "This key was refused: " + (await errorMessage(response, false));
          keyError.hidden = false;
          $("key-input").select();
          return;
        }
      } catch (_) {
        // offline or unreachable: keep the key; the first question will report the problem
      } finally {
        $("key-save").disabled = false;
      }
      sessionStorage.setItem(KEY_STORAGE, key);
      $("key-input").value = "";
      showError("");
      showView();
    });

    $("customer").value = sessionStorage.getItem(CUSTOMER_STORAGE) || "";
    $("customer").addEventListener("input", () => {
      const customer = $("customer").value.trim();
      if (customer) sessionStorage.setItem(CUSTOMER_STORAGE, customer);
      else sessionStorage.removeItem(CUSTOMER_STORAGE);
    });

    $("sign-out").addEventListener("click", (event) => {
      event.preventDefault();
      if (controller) controller.abort();
      sessionStorage.removeItem(KEY_STORAGE);
      showError("");
      $("key-error").hidden = true;
      showView();
    });

    $("new-conversation").addEventListener("click", () => {
      clearConversation();
      showError("");
      resetMessages();
      $("question").focus();
    });

    $("chat-form").addEventListener("submit", (event) => {
      event.preventDefault();
      if (controller) return;
      const question = $("question").value.trim();
      if (!question) return;
      $("question").value = "";
      ask(question);
    });

    $("question").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $("chat-form").requestSubmit();
      }
    });

    $("stop").addEventListener("click", () => {
      if (controller) controller.abort();
    });

    $("passage-close").addEventListener("click", closePassage);
    $("passage-panel").addEventListener("click", (event) => {
      if (event.target === $("passage-panel")) closePassage(); // a click on the backdrop
    });

    showView();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
