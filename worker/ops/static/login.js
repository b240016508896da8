// The login form: trade the API token for a session cookie, then load the dashboard.
const form = document.getElementById("login");
const error = document.getElementById("login-error");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.hidden = true;
  const token = document.getElementById("token").value;
  try {
    const response = await fetch("/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token }),
      credentials: "same-origin",
    });
    if (response.ok) {
      window.location.replace(`/${window.location.search}`); // same page, same options
      return;
    }
    const body = await response.json().catch(() => ({}));
    error.textContent = body.error || `login failed (${response.status})`;
  } catch (e) {
    error.textContent = `the API did not answer: ${e.message}`;
  }
  error.hidden = false;
});
