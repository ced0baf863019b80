console.log("node", process.versions.node);
