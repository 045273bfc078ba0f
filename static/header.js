// The open conversation's header: its model, its generation settings, its share link and
// its export (JSON or Markdown, downloaded with the token, never by a URL holding it).

const $ = (id) => document.getElementById(id);
const PARAMS = ["temperature", "top_p", "max_tokens", "reasoning_effort"];

const header = {
  api: null, // the page's api(path, options)
  token: null, // () => the session's token
  current: () => null, // () => the open conversation's id, or null
  onError: null,
};

export function initHeader({ api, token, current, onError }) {
  Object.assign(header, { api, token, current, onError });
  const guard = (action) => (event) => {
    event?.preventDefault();
    if (header.current() !== null) action(header.current()).catch((error) => header.onError(error.message));
  };
  $("show-params").addEventListener("click", guard(async () => { $("params-form").hidden = !$("params-form").hidden; }));
  $("params-form").addEventListener("submit", guard(saveParams));
  $("conversation-model").addEventListener("change", guard(saveModel));
  $("share").addEventListener("click", guard(share));
  $("unshare").addEventListener("click", guard(async (id) => {
    await header.api(`/api/conversations/unshare/${id}`, { method: "POST" });
    $("share-panel").hidden = true;
  }));
  $("export-json").addEventListener("click", guard((id) => download(id, "json")));
  $("export-markdown").addEventListener("click", guard((id) => download(id, "markdown")));
}

// The models a conversation may use, in the create form and the header's picker.
export function showModels(body) {
  for (const select of [$("model-select"), $("conversation-model")]) {
    select.replaceChildren();
    for (const model of body.models.filter((m) => !m.pattern)) {
      select.append(new Option(model.id, model.id, false, model.id === body.default));
    }
  }
}

// Another conversation is open (history as the server gave it), or none (null).
export function showConversation(history) {
  $("share-panel").hidden = true;
  $("params-form").hidden = true;
  for (const id of ["share", "show-params", "export-json", "export-markdown", "conversation-model"]) {
    $(id).disabled = !history;
  }
  if (!history) return;
  showParams(history.params || {});
  const picker = $("conversation-model");
  if (![...picker.options].some((o) => o.value === history.model)) picker.append(new Option(history.model));
  picker.value = history.model;
}

function showParams(params) {
  for (const name of PARAMS) $(`param-${name}`).value = params[name] ?? "";
}

async function saveParams(id) {
  const params = {};
  for (const name of PARAMS) {
    const raw = $(`param-${name}`).value.trim();
    const value = raw === "" ? null : name === "reasoning_effort" ? raw : Number(raw);
    if (typeof value === "number" && !Number.isFinite(value)) throw new Error(`${name} must be a number`);
    params[name] = value;
  }
  const updated = await header.api(`/api/conversations/update/${id}`, { method: "POST", body: JSON.stringify({ params }) });
  showParams(updated.params);
  $("params-form").hidden = true;
}

async function saveModel(id) {
  const picker = $("conversation-model");
  try {
    const updated = await header.api(`/api/conversations/update/${id}`, {
      method: "POST", body: JSON.stringify({ model: picker.value }),
    });
    picker.value = updated.model;
  } catch (error) {
    const history = await header.api(`/api/conversations/history/${id}`).catch(() => null);
    if (history) picker.value = history.model; // show what it still uses
    throw error;
  }
}

async function share(id) {
  const shared = await header.api(`/api/conversations/share/${id}`, { method: "POST" });
  $("share-link").href = shared.url;
  $("share-link").textContent = new URL(shared.url, location.href).href;
  $("share-panel").hidden = false;
}

async function download(id, format) {
  let response;
  try {
    response = await fetch(`/api/conversations/export/${id}?format=${format}`, {
      headers: { Authorization: `Bearer ${header.token()}` },
    });
  } catch {
    throw new Error("Cannot reach the server. Check your connection.");
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error || `The export failed (${response.status}).`);
  }
  const name = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "")?.[1]
    || `conversation-${id}.${format === "markdown" ? "md" : "json"}`;
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
