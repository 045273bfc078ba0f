// The API-token panel: make a token for a script (its secret shown this once), see and
// delete the ones made. Text only (textContent).

const $ = (id) => document.getElementById(id);
let call = null; // the page's api(path, options)
let reportError = () => {};

export function initTokens(options) {
  call = options.api;
  reportError = options.onError;
  $("show-tokens").addEventListener("click", () => {
    $("tokens-panel").hidden = !$("tokens-panel").hidden;
    if (!$("tokens-panel").hidden) listTokens().catch((e) => reportError(e.message));
  });
  $("tokens-form").addEventListener("submit", (event) => {
    event.preventDefault();
    createToken().catch((e) => reportError(e.message));
  });
}

async function createToken() {
  const name = $("token-name").value.trim();
  if (!name) return;
  const made = await call("/api/tokens", { method: "POST", body: JSON.stringify({ name }) });
  $("token-name").value = "";
  $("new-token").textContent = made.token; // shown this once: the server keeps only a hash
  $("new-token-row").hidden = false;
  await listTokens();
}

async function listTokens() {
  const tokens = await call("/api/tokens");
  const list = $("tokens");
  list.replaceChildren();
  for (const token of tokens) {
    const item = document.createElement("li");
    item.dataset.testid = "token-item";
    const name = document.createElement("span");
    name.textContent = token.name;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "secondary";
    remove.dataset.testid = "delete-token";
    remove.textContent = "✕";
    remove.title = "Delete: it stops working at once";
    remove.addEventListener("click", () => {
      call(`/api/tokens/del/${encodeURIComponent(token.token_id)}`, { method: "POST" })
        .then(listTokens).catch((e) => reportError(e.message));
    });
    item.append(name, remove);
    list.append(item);
  }
}
