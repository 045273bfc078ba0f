// Attachments on the page (DESIGN.md, Attachments): upload (the attach button, paste, drag
// and drop), the files waiting to go with the next message, and each message's files shown
// under it as thumbnails or download links. A file is fetched with the token, never by URL.

let token = () => null;
let reportError = () => {};
let pending = []; // [{file_id, name, content_type, size}] for the next message
const urls = new Map(); // file_id -> Promise of an object URL

const $ = (id) => document.getElementById(id);

// The ways in: the Attach button (the file input), a paste into the composer, a drop on the chat.
export function initAttachments(options) {
  token = options.token;
  reportError = options.onError;
  $("attach-button").addEventListener("click", () => $("attach").click());
  $("attach").addEventListener("change", () => {
    const files = [...$("attach").files];
    $("attach").value = "";
    addFiles(files);
  });
  $("message-input").addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files || [])];
    if (files.length) {
      event.preventDefault();
      addFiles(files);
    }
  });
  $("chat").addEventListener("dragover", (event) => event.preventDefault());
  $("chat").addEventListener("drop", (event) => {
    event.preventDefault();
    addFiles([...(event.dataTransfer?.files || [])]);
  });
}

// Upload each file, then show it as waiting for the next message.
export async function addFiles(files) {
  for (const file of files) {
    try {
      const stored = await upload(file);
      pending.push(stored);
      showPending();
    } catch (error) {
      reportError(`${file.name || "The file"}: ${error.message}`);
    }
  }
}

// Another conversation, or a logout: nothing waits, and the images shown are let go.
export function resetAttachments() {
  pending = [];
  showPending();
  for (const url of urls.values()) url.then((u) => URL.revokeObjectURL(u)).catch(() => {});
  urls.clear();
}

// The ids of the waiting files, which go with the message being sent; none wait after.
export function takePending() {
  const ids = pending.map((f) => f.file_id);
  pending = [];
  showPending();
  return ids;
}

// A message's files, shown under its bubble in an element of their own (images: their
// thumbnails, kept while the conversation is open).
export function showAttachments(bubble, messageId, attachments) {
  if (!attachments || !attachments.length) return;
  const row = document.createElement("li");
  row.className = "files";
  if (messageId) row.dataset.messageId = String(messageId);
  for (const file of attachments) row.append(attachmentLink(file));
  bubble.after(row);
}

async function upload(file) {
  const body = new FormData();
  body.append("file", file, file.name || "pasted.png");
  let response;
  try {
    response = await fetch("/api/files", { method: "POST", headers: { Authorization: `Bearer ${token()}` }, body });
  } catch {
    throw new Error("cannot reach the server");
  }
  const json = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(json.error || `the server answered ${response.status}`);
  return json;
}

function showPending() {
  const list = document.getElementById("pending-files");
  list.replaceChildren();
  pending.forEach((file, at) => {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.dataset.testid = "pending-attachment";
    chip.textContent = file.name;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "secondary";
    remove.textContent = "✕";
    remove.title = "Do not send this file";
    remove.addEventListener("click", () => { pending.splice(at, 1); showPending(); });
    chip.append(remove);
    list.append(chip);
  });
  list.hidden = pending.length === 0;
}

function attachmentLink(file) {
  const link = document.createElement("a");
  link.href = "#";
  link.dataset.testid = "attachment";
  link.dataset.fileId = file.file_id;
  link.title = `${file.name} (${file.content_type}, ${file.size} bytes)`;
  if (file.content_type.startsWith("image/")) {
    const image = document.createElement("img");
    image.alt = file.name;
    thumbnailUrl(file.file_id).then((url) => { image.src = url; }).catch(() => { image.alt = `${file.name} (unavailable)`; });
    link.append(image);
  } else {
    link.className = "file";
    link.textContent = file.name; // textContent: a file's name is the user's text
  }
  link.addEventListener("click", (event) => {
    event.preventDefault();
    download(file).catch((error) => reportError(`${file.name}: ${error.message}`));
  });
  return link;
}

function thumbnailUrl(fileId) {
  if (!urls.has(fileId)) {
    urls.set(fileId, fetch(`/api/files/${encodeURIComponent(fileId)}`, {
      headers: { Authorization: `Bearer ${token()}` },
    }).then((response) => {
      if (!response.ok) throw new Error(`the server answered ${response.status}`);
      return response.blob();
    }).then((blob) => URL.createObjectURL(blob)));
    urls.get(fileId).catch(() => urls.delete(fileId)); // try again next time
  }
  return urls.get(fileId);
}

async function download(file) {
  // Its own object URL, let go once the browser has taken the download.
  const response = await fetch(`/api/files/${encodeURIComponent(file.file_id)}`, {
    headers: { Authorization: `Bearer ${token()}` },
  });
  if (!response.ok) throw new Error(`the server answered ${response.status}`);
  const url = URL.createObjectURL(await response.blob());
  const save = document.createElement("a");
  save.href = url;
  save.download = file.name;
  save.click();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
