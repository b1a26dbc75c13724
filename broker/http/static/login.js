"use strict";
document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = document.getElementById("token").value;
  const response = await fetch("/login", {
    method: "POST",
    headers: {"content-type": "application/json", "x-jobwire-csrf": "1"},
    body: JSON.stringify({token}),
    credentials: "same-origin",
  });
  if (response.ok) {
    location.href = "/";
  } else {
    document.getElementById("message").textContent = "Wrong token.";
  }
});
