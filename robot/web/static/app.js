// The parents' page. Every text from the robot is put in with textContent, never as markup.
"use strict";

let csrf = "";
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function say(message) {
  $("message").textContent = message || "";
}

async function post(url, data) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify(data || {}),
    credentials: "same-origin",
  });
  if (response.status === 401) {
    window.location.assign("/login");
    return null;
  }
  let answer = {};
  try {
    answer = await response.json();
  } catch (e) {
    answer = { error: response.status + " " + response.statusText };
  }
  say(answer.error || answer.warning || "");
  return response.ok ? answer : null;
}

function showState(view) {
  $("state").textContent = view.state;
  $("status").textContent = view.status;
  const problems = Object.entries(view.problems || {});
  const degraded = $("degraded");
  degraded.textContent = problems.length ? "degraded: " + problems.map(([what, why]) => what + ": " + why).join("; ") : "";
  degraded.className = problems.length ? "degraded" : "";
  for (const [id, value] of [["volume", view.volume], ["cap", view.volume_cap]]) {
    if (document.activeElement !== $(id)) $(id).value = value;
  }
  const choices = view.choices;
  if (!document.getElementById("limits-form").contains(document.activeElement)) {
    $("quiet-start").value = choices.quiet_start;
    $("quiet-end").value = choices.quiet_end;
    $("daily-limit").value = choices.daily_limit_min;
  }
  if (!document.getElementById("safety-form").contains(document.activeElement)) {
    $("strictness").value = choices.strictness;
    $("blocked").value = choices.blocked_words.join("\n");
    $("allowed").value = choices.allowed_words.join("\n");
  }
  const limits = view.limits;
  $("limits-now").textContent =
    "Today: " + limits.story_min_today + " min of stories. " +
    (limits.is_quiet_now ? "Quiet hours now (" + limits.quiet_stories_tonight + " bedtime stories so far)." : "");
  if (view.story && $("sentences").childElementCount === 0) showStory(view.story);
}

function showStory(entry) {
  $("now-request").textContent = entry.notice ? "" : "Asked (" + entry.source + "): " + entry.request;
  const list = $("sentences");
  list.replaceChildren(...entry.sentences.map((s) => el("li", s)));
}

function addSentence(data) {
  $("sentences").appendChild(el("li", data.text));
}

function showHistory(data) {
  const favourites = $("favourites");
  favourites.replaceChildren(
    ...data.favourites.map((f) => {
      const item = el("li");
      item.appendChild(el("strong", f.request || "(no request)"));
      item.appendChild(el("p", f.text, "story-text"));
      item.appendChild(el("p", "seed " + f.seed + (f.model_sha256 ? ", model " + f.model_sha256.slice(0, 12) : ""), "small"));
      const replay = el("button", "Replay");
      replay.type = "button";
      replay.className = "replay";
      replay.dataset.id = f.id;
      replay.addEventListener("click", () => post("/api/favourites/replay", { favourite: f.id }));
      const remove = el("button", "Remove");
      remove.type = "button";
      remove.addEventListener("click", async () => {
        if (await post("/api/favourites/remove", { favourite: f.id })) loadHistory();
      });
      item.append(replay, " ", remove);
      return item;
    })
  );
  const history = $("history");
  history.replaceChildren(
    ...data.entries.map((e) => {
      const item = el("li");
      item.className = "entry";
      item.dataset.id = e.id;
      item.appendChild(el("p", e.started_at.replace("T", " ") + " · " + e.source + " · " + e.outcome, "small"));
      item.appendChild(el("strong", e.notice ? "(no story: the parents' limits)" : e.request || "(no request)", "request"));
      item.appendChild(el("p", e.sentences.join(" "), "story-text"));
      if (e.removed.length) {
        const removed = el("div", null, "removed");
        removed.appendChild(el("p", "Kept from the child by the safety filter:", "small"));
        for (const sentence of e.removed) removed.appendChild(el("p", sentence, "removed-sentence"));
        item.appendChild(removed);
      }
      if (!e.notice && e.outcome !== "telling") {
        const mark = el("button", "Favourite");
        mark.type = "button";
        mark.className = "favourite";
        mark.addEventListener("click", async () => {
          if (await post("/api/favourites", { story: e.id })) loadHistory();
        });
        item.appendChild(mark);
      }
      return item;
    })
  );
}

async function loadHistory() {
  const response = await fetch("/api/history", { credentials: "same-origin" });
  if (response.ok) showHistory(await response.json());
}

function listen() {
  const events = new EventSource("/api/events");
  events.addEventListener("state", (e) => showState(JSON.parse(e.data)));
  events.addEventListener("story", (e) => showStory(JSON.parse(e.data)));
  events.addEventListener("sentence", (e) => addSentence(JSON.parse(e.data)));
  events.addEventListener("end", () => loadHistory());
}

function lines(id) {
  return $(id).value.split("\n").map((s) => s.trim()).filter((s) => s);
}

function wire() {
  $("stop").addEventListener("click", () => post("/api/stop"));
  $("tell-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (await post("/api/tell", { text: $("tell-text").value })) $("tell-text").value = "";
  });
  $("volume-form").addEventListener("submit", (e) => {
    e.preventDefault();
    post("/api/volume", { volume: Number($("volume").value), cap: Number($("cap").value) });
  });
  $("limits-form").addEventListener("submit", (e) => {
    e.preventDefault();
    post("/api/settings", {
      quiet_start: $("quiet-start").value.trim(),
      quiet_end: $("quiet-end").value.trim(),
      daily_limit_min: Number($("daily-limit").value),
    });
  });
  $("safety-form").addEventListener("submit", (e) => {
    e.preventDefault();
    post("/api/settings", { strictness: $("strictness").value, blocked_words: lines("blocked"), allowed_words: lines("allowed") });
  });
  $("logout-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    await post("/logout");
    window.location.assign("/login");
  });
}

async function start() {
  const response = await fetch("/api/state", { credentials: "same-origin" });
  if (response.status === 401) {
    window.location.assign("/login");
    return;
  }
  const view = await response.json();
  csrf = view.csrf;
  showState(view);
  wire();
  listen();
  loadHistory();
}

document.addEventListener("DOMContentLoaded", start);
