// Light and dark: the system's choice until the reader picks one (kept in localStorage).
// The choice is the `data-theme` attribute of <html>; style.css does the rest.

const KEY = "theme";

export function initTheme(button) {
  apply(localStorage.getItem(KEY));
  button?.addEventListener("click", () => {
    const next = shown() === "dark" ? "light" : "dark";
    localStorage.setItem(KEY, next);
    apply(next);
  });
}

function shown() {
  return document.documentElement.dataset.theme;
}

function apply(theme) {
  const system = matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  document.documentElement.dataset.theme = theme === "light" || theme === "dark" ? theme : system;
  const button = document.querySelector('[data-testid="theme"]');
  if (button) {
    const dark = shown() === "dark";
    button.textContent = dark ? "☀" : "☾";
    button.title = dark ? "Light theme" : "Dark theme";
    button.setAttribute("aria-label", button.title);
  }
}
