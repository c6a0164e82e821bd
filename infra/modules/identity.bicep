// The app's user-assigned managed identity: the Function App, its deployment storage, the Key Vault
// references, Event Hubs Capture and the scoring token all act as this one identity (roles: each module).

param name string
param location string
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
