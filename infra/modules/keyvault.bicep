// Key Vault in RBAC mode holding the head-unit signing key; the app reads it through a Key Vault reference
// (keyVaultReferenceIdentity = the app identity, Key Vault Secrets User on this vault).

param name string
param location string
param tags object
@secure()
@description('The HMAC-SHA256 key alerts are signed with; the head-unit gateway holds the same key.')
param headUnitSigningKey string
@description('Purge protection: on for production; off lets `azd down --purge` free the vault name at once.')
param purgeProtection bool
param appPrincipalId string
@description('A person (AZURE_PRINCIPAL_ID) who may set secrets, e.g. scoring-key for key-auth endpoints; empty for none.')
param officerPrincipalId string = ''
param officerPrincipalType string = 'User'

var roles = loadJsonContent('../roles.json')

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_110: purge protection is a parameter (keyVaultPurgeProtection) and off by default, so that `azd down --purge` then `azd up` can re-create the same environment; turn it on for production
  // checkov:skip=CKV_AZURE_42: soft delete is on (7 days); full recoverability is purge protection, see CKV_AZURE_110
  // checkov:skip=CKV_AZURE_189: see CKV_AZURE_109: Key Vault references from Flex Consumption without a virtual network use the public endpoint
  // checkov:skip=CKV_AZURE_109: Key Vault references from Flex Consumption without a virtual network come over the public endpoint; every read needs an Entra ID token with Key Vault Secrets User
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
    enablePurgeProtection: purgeProtection ? true : null
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource signingKey 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  // checkov:skip=CKV_AZURE_41: the key is shared with the head-unit gateway and rotated with it; an expiry date would silently stop every delivery
  parent: vault
  name: 'head-unit-signing-key'
  properties: {
    value: headUnitSigningKey
    contentType: 'text/plain'
  }
}

resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, appPrincipalId, roles.KeyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.KeyVaultSecretsUser)
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource secretsOfficer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(officerPrincipalId)) {
  name: guid(vault.id, officerPrincipalId, roles.KeyVaultSecretsOfficer)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.KeyVaultSecretsOfficer)
    principalId: officerPrincipalId
    principalType: officerPrincipalType
  }
}

output id string = vault.id
output name string = vault.name
output uri string = vault.properties.vaultUri
output signingKeySecretUri string = signingKey.properties.secretUri
