// ferrolabel: start Swagger UI on the server's own OpenAPI description (no CDN, works offline).
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // the MONAI Label routes are grouped by tag, in the order the description lists them
    docExpansion: "list",
    tryItOutEnabled: false,
    // no call to validator.swagger.io: the page must work offline
    validatorUrl: null,
  });
});
