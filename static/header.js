// The open conversation's header: its model, its generation settings, its share link and
// its export (JSON or Markdown, downloaded with the token, never by a URL holding it).

const $ = (id) => document.getElementById(id);
const PARAMS = ["temperature", "top_p", "max_tokens", "reasoning_effort"];

const header = {
  api: null, // the page's api(path, options)
  current: () => null, // () => the open conversation's id, or null
  onError: null,
  model: null, // the open conversation's model
};

export function initHeader({ api, current, onError }) {
  Object.assign(header, { api, current, onError });
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
    if (header.current() === id) $("share-panel").hidden = true;
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
  showModel(header.model);
}

// A conversation is open (history as the server gave it: `changed` if it is another one
// than before), or none (null). The same one read again keeps the panels as they are.
export function showConversation(history, changed = true) {
  if (changed) {
    $("share-panel").hidden = true;
    $("params-form").hidden = true;
    if (history) showParams(history.params || {});
  }
  for (const id of ["share", "show-params", "export-json", "export-markdown", "conversation-model"]) {
    $(id).disabled = !history;
  }
  showModel(history ? history.model : null);
}

// The picker shows the open conversation's model; one this server no longer offers
// (a pattern's, a removed one's) as an option of its own while that conversation is open.
function showModel(model) {
  header.model = model;
  const picker = $("conversation-model");
  picker.querySelector("option.extra")?.remove();
  if (model === null) return;
  if (![...picker.options].some((o) => o.value === model)) {
    const extra = new Option(model);
    extra.className = "extra";
    picker.append(extra);
  }
  picker.value = model;
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
  if (header.current() !== id) return; // another conversation is open now
  showParams(updated.params);
  $("params-form").hidden = true;
}

async function saveModel(id) {
  const asked = $("conversation-model").value;
  try {
    const updated = await header.api(`/api/conversations/update/${id}`, {
      method: "POST", body: JSON.stringify({ model: asked }),
    });
    if (header.current() === id) showModel(updated.model);
  } catch (error) {
    if (header.current() === id) showModel(header.model); // what it still uses
    throw error;
  }
}

async function share(id) {
  const shared = await header.api(`/api/conversations/share/${id}`, { method: "POST" });
  if (header.current() !== id) return;
  $("share-link").href = shared.url;
  $("share-link").textContent = new URL(shared.url, location.href).href;
  $("share-panel").hidden = false;
}

async function download(id, format) {
  const response = await header.api(`/api/conversations/export/${id}?format=${format}`, { raw: true });
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
